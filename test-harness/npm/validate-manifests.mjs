// Validates upstream-guard's mesh manifests:
//   node validate-manifests.mjs <envoy-examples dir> <EnvoyExtensionPolicy JSON Schema>
// Istio WasmPlugins are checked with @kubernetes-models/istio; Envoy Gateway
// EnvoyExtensionPolicies against the project's own JSON Schema
// (test-harness/schemas/envoy-gateway-envoyextensionpolicy.schema.json). Prints one JSON line per
// plugin configuration ({file, kind, filter, config}) so the caller can check each with the
// filter's own parser and schema: one per manifest, and one per wasm filter of every
// <example>/envoy.yaml (kind "Envoy", its StringValue parsed as JSON). Exits 1 on the first invalid
// manifest, naming the field at fault.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import Ajv from "ajv";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";

const [, , examples, schemaPath] = process.argv;
if (!examples || !schemaPath) {
  console.error("usage: node validate-manifests.mjs <envoy-examples dir> <EnvoyExtensionPolicy schema.json>");
  process.exit(2);
}
const fail = (file, why) => {
  console.error(`${file}: ${why}`);
  process.exit(1);
};
const WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
// Every wasm filter's plugin configuration in an Envoy config: [root_id, configuration text].
const wasmConfigs = (node, out = []) => {
  if (Array.isArray(node)) node.forEach((n) => wasmConfigs(n, out));
  else if (node && typeof node === "object") {
    if (node["@type"] === WASM && node.config) out.push([node.config.root_id, node.config.configuration?.value ?? ""]);
    else Object.values(node).forEach((n) => wasmConfigs(n, out));
  }
  return out;
};
for (const dir of readdirSync(examples).sort()) {
  const file = join(examples, dir, "envoy.yaml");
  if (!existsSync(file)) continue;
  for (const [filter, text] of wasmConfigs(parse(readFileSync(file, "utf8")))) {
    let config;
    try {
      config = text.trim() === "" ? {} : JSON.parse(text);
    } catch (e) {
      fail(file, `the configuration of ${filter} is not JSON: ${e.message}`);
    }
    console.log(JSON.stringify({ file, kind: "Envoy", filter, config }));
  }
}

const yamlFiles = (dir) => readdirSync(join(examples, dir)).filter((f) => f.endsWith(".yaml")).sort();

for (const name of yamlFiles("istio")) {
  const file = join(examples, "istio", name);
  const doc = parse(readFileSync(file, "utf8"));
  try {
    new WasmPlugin(doc).validate();
  } catch (e) {
    fail(file, e.message);
  }
  if (!/^[a-f0-9]{64}$/.test(doc.spec.sha256 ?? "")) fail(file, "spec.sha256 is not 64 hex digits");
  if (!String(doc.spec.url).startsWith("oci://")) fail(file, "spec.url is not an oci:// URL");
  console.log(JSON.stringify({ file, kind: doc.kind, filter: doc.spec.pluginName, config: doc.spec.pluginConfig }));
}

// strict: a mistake in the schema itself (an unknown keyword, say) is an error, not a silent pass.
// strictRequired stays off: the if/then rules require properties declared one level up.
const ajv = new Ajv({ strict: true, strictRequired: false, allErrors: true });
const validate = ajv.compile(JSON.parse(readFileSync(schemaPath, "utf8")));
for (const name of yamlFiles("envoy-gateway")) {
  const file = join(examples, "envoy-gateway", name);
  const doc = parse(readFileSync(file, "utf8"));
  if (!validate(doc)) {
    const why = validate.errors.map((e) => {
      const extra = e.params.allowedValues ?? e.params.additionalProperty ?? e.params.allowedValue ?? e.params.missingProperty;
      return `${e.instancePath || "/"} ${e.message}${extra === undefined ? "" : ` (${JSON.stringify(extra)})`}`;
    });
    fail(file, why.join("; "));
  }
  for (const w of doc.spec.wasm) {
    console.log(JSON.stringify({ file, kind: doc.kind, filter: w.rootID, config: w.config }));
  }
}
