// Validates upstream-guard's mesh manifests:
//   node validate-manifests.mjs <envoy-examples dir> <EnvoyExtensionPolicy CRD yaml>
// Istio WasmPlugins are checked with @kubernetes-models/istio; Envoy Gateway
// EnvoyExtensionPolicies against the CRD's openAPIV3Schema. Prints one JSON line per manifest
// ({file, kind, filter, config}) so the caller can check each plugin config with the filter's
// own parser; exits 1 on the first invalid manifest.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parse } from "yaml";
import Ajv from "ajv";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";

const [, , examples, crdPath] = process.argv;
const fail = (file, why) => {
  console.error(`${file}: ${why}`);
  process.exit(1);
};

for (const name of readdirSync(join(examples, "istio")).filter((f) => f.endsWith(".yaml")).sort()) {
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

const crd = parse(readFileSync(crdPath, "utf8"));
const version = crd.spec.versions.find((v) => v.name === "v1alpha1");
const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
const validate = ajv.compile(version.schema.openAPIV3Schema);
for (const name of readdirSync(join(examples, "envoy-gateway")).filter((f) => f.endsWith(".yaml")).sort()) {
  const file = join(examples, "envoy-gateway", name);
  const doc = parse(readFileSync(file, "utf8"));
  if (doc.apiVersion !== `${crd.spec.group}/v1alpha1` || doc.kind !== crd.spec.names.kind) fail(file, "not an EnvoyExtensionPolicy");
  if (!validate(doc)) fail(file, ajv.errorsText(validate.errors));
  for (const w of doc.spec.wasm) {
    if (!/^[a-f0-9]{64}$/.test(w.code.image?.sha256 ?? "")) fail(file, "code.image.sha256 is not 64 hex digits");
    console.log(JSON.stringify({ file, kind: doc.kind, filter: w.rootID, config: w.config }));
  }
}
