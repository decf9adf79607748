// Prints each document of a YAML file as one JSON line:
//   node yaml-to-json.mjs <file.yaml>
// The deployment tests read the shipped manifests with it (the same parser the validators use).
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const [, , file] = process.argv;
if (!file) {
  console.error("usage: node yaml-to-json.mjs <file.yaml>");
  process.exit(2);
}
for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
  if (doc.errors.length > 0) {
    console.error(`${file}: ${doc.errors[0].message}`);
    process.exit(1);
  }
  console.log(JSON.stringify(doc.toJS()));
}
