// Validates Kubernetes objects with the kubernetes-models JSON schemas (npm), including the KEDA CRDs
// from @kubernetes-models/keda. Usage: node validate_models.mjs FILE.yaml...
// Module resolution: NODE_PATH is not used by ESM, so modules are loaded from
// $LOOPWATCH_NODE_MODULES (set by run.sh). Prints one JSON line per object; exits 1 on any failure.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = process.env.LOOPWATCH_NODE_MODULES;
if (!root) {
  console.error("LOOPWATCH_NODE_MODULES is not set (run through collector-config/tests/run.sh)");
  process.exit(2);
}
const load = (rel) => import(pathToFileURL(join(root, rel)).href);

const YAML = (await load("yaml/dist/index.js")).default;
// apiVersion/kind -> module that exports the model class.
const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": ["@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js", "ScaledObject"],
  "apps/v1/Deployment": ["kubernetes-models/apps/v1/Deployment.js", "Deployment"],
  "v1/Service": ["kubernetes-models/v1/Service.js", "Service"],
  "v1/Namespace": ["kubernetes-models/v1/Namespace.js", "Namespace"],
  "v1/ConfigMap": ["kubernetes-models/v1/ConfigMap.js", "ConfigMap"],
  "policy/v1/PodDisruptionBudget": ["kubernetes-models/policy/v1/PodDisruptionBudget.js", "PodDisruptionBudget"],
  "autoscaling/v2/HorizontalPodAutoscaler": [
    "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler.js",
    "HorizontalPodAutoscaler",
  ],
};

// The generated validators accept unknown properties; KEDA's CRD (structural schema) prunes them
// silently, so a typo such as `scaleTargetRf` would be lost without error. Reject them here, using
// the property names declared in the package's own type definitions.
const KEDA_DIR = join(root, "@kubernetes-models/keda/keda.sh/v1alpha1");
function declaredKeys(typeFile) {
  const src = readFileSync(join(KEDA_DIR, typeFile), "utf8");
  const m = src.match(/export interface I\w+ \{([\s\S]*?)\n\}/);
  if (!m) throw new Error(`cannot read interface from ${typeFile}`);
  return new Set([...m[1].matchAll(/^ {4}"([^"]+)"\??:/gm)].map((x) => x[1]));
}
const STRICT = [
  // [path getter, type file]
  [(o) => [o.spec], "ScaledObjectSpec.d.ts"],
  [(o) => [o.spec?.scaleTargetRef], "ScaleTarget.d.ts"],
  [(o) => [o.spec?.advanced], "AdvancedConfig.d.ts"],
  [(o) => [o.spec?.advanced?.horizontalPodAutoscalerConfig], "HorizontalPodAutoscalerConfig.d.ts"],
  [(o) => o.spec?.triggers ?? [], "ScaleTriggers.d.ts"],
];
function strictErrors(obj) {
  const errs = [];
  for (const [get, typeFile] of STRICT) {
    const allowed = declaredKeys(typeFile);
    for (const part of get(obj)) {
      if (!part || typeof part !== "object") continue;
      for (const k of Object.keys(part)) {
        if (!allowed.has(k)) errs.push(`unknown field "${k}" (not in ${typeFile})`);
      }
    }
  }
  return errs;
}

let failed = 0;
for (const file of process.argv.slice(2)) {
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) {
      console.log(JSON.stringify({ file, ok: false, error: String(doc.errors[0]) }));
      failed++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const key = `${obj.apiVersion}/${obj.kind}`;
    const entry = MODELS[key];
    if (!entry) {
      console.log(JSON.stringify({ file, kind: key, ok: false, error: "no model known for this kind" }));
      failed++;
      continue;
    }
    const mod = await load(entry[0]);
    const Model = mod[entry[1]];
    try {
      new Model(obj).validate();
      if (obj.kind === "ScaledObject") {
        const errs = strictErrors(obj);
        if (errs.length) throw new Error(errs.join("; "));
      }
      console.log(JSON.stringify({ file, kind: key, name: obj.metadata?.name, ok: true }));
    } catch (e) {
      console.log(JSON.stringify({ file, kind: key, name: obj.metadata?.name, ok: false, error: String(e && e.message ? e.message : e) }));
      failed++;
    }
  }
}
process.exit(failed ? 1 : 0);
