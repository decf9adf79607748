// Validates plugin configurations against upstream-guard's own JSON Schemas:
//   node validate-configs.mjs <schemas dir>   (one {"schema": "<module>", "config": …} per stdin line)
// Prints one {"valid": bool, "errors": [...]} line per input line, in order. The schemas are
// envoy-examples/schemas/<module>.schema.json (draft 2020-12), generated from the filters' own
// configuration types by `cargo xtask schemas`.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Ajv2020 from "ajv/dist/2020.js";

const [, , dir] = process.argv;
if (!dir) {
  console.error("usage: node validate-configs.mjs <schemas dir> < lines");
  process.exit(2);
}
// strict: a mistake in a schema (an unknown keyword, say) is an error, not a silent pass
// (strictRequired stays off: the "at most one path condition" rule names sibling properties). The
// integer formats schemars writes (uint32, …) carry no check beyond the bounds beside them.
const ajv = new Ajv2020({ strict: true, strictRequired: false, allowUnionTypes: true, validateFormats: false, allErrors: true });
const compiled = new Map();
const validator = (name) => {
  if (!compiled.has(name)) {
    compiled.set(name, ajv.compile(JSON.parse(readFileSync(join(dir, `${name}.schema.json`), "utf8"))));
  }
  return compiled.get(name);
};
const lines = readFileSync(0, "utf8").split("\n").filter((l) => l.trim() !== "");
for (const line of lines) {
  const { schema, config } = JSON.parse(line);
  const validate = validator(schema);
  const valid = validate(config);
  const errors = valid ? [] : validate.errors.map((e) => `${e.instancePath || "/"} ${e.message}`);
  console.log(JSON.stringify({ valid, errors }));
}
