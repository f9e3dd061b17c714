"""Validates rendered Kubernetes manifests, strictly (unknown fields are errors).

    validate.py --kubernetes 1.33.0 --crds DIR FILE...

Each FILE is a multi-document YAML stream (one `kustomize build`). Built-in kinds are
checked by the PyPI package kubernetes-validate against the Kubernetes version's
OpenAPI schemas; custom resources (KEDA's ScaledObject) against the openAPIV3Schema of
their CustomResourceDefinition in DIR (KEDA's own CRD files), made strict by refusing
properties the schema does not name. Then what no schema sees: no workload's pods
fall under two PodDisruptionBudgets (the eviction API refuses such pods, so a node
never drains). Prints one line per resource; exits 1 on the first file with an error,
naming the resource and the path of the bad field.
"""

import argparse
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """The schema with additionalProperties: false wherever it lists properties and does
    not ask to keep unknown fields (a structural schema would silently prune them)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def load_crds(directory):
    """(group/version, kind) -> the strict schema of every served version."""
    schemas = {}
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = version["schema"]["openAPIV3Schema"]
                    # apiVersion, kind and metadata are the API server's to check.
                    schema = dict(schema, properties=dict(schema["properties"]))
                    schema["properties"]["metadata"] = {"type": "object"}
                    schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def budgets_per_workload(documents):
    """Errors for workloads whose pod labels two PodDisruptionBudgets select."""
    budgets = [d for d in documents if d.get("kind") == "PodDisruptionBudget"]
    errors = []
    for workload in (d for d in documents if d.get("kind") in WORKLOADS):
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        matching = [
            b["metadata"]["name"]
            for b in budgets
            if b["metadata"].get("namespace") == workload["metadata"].get("namespace")
            and all(labels.get(k) == v for k, v in b["spec"]["selector"].get("matchLabels", {}).items())
        ]
        if len(matching) > 1:
            errors.append(f"{workload['kind']}/{workload['metadata']['name']}: pods under {matching}")
    return errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes", required=True)
    parser.add_argument("--crds", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    crds = load_crds(args.crds)
    for file in args.files:
        documents = [d for d in yaml.safe_load_all(pathlib.Path(file).read_text()) if d]
        if not documents:
            sys.exit(f"{file}: no resources")
        for doc in documents:
            name = f"{file}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in crds:
                    jsonschema.validate(doc, crds[key])
                else:
                    kubernetes_validate.validate(doc, args.kubernetes, strict=True)
            except jsonschema.ValidationError as error:
                path = "/".join(str(p) for p in error.absolute_path)
                sys.exit(f"INVALID {name}: {path}: {error.message}")
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                sys.exit(f"INVALID {name}: {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                sys.exit(f"UNKNOWN {name}: no schema for {key} ({error})")
            print(f"valid {name}")
        for error in budgets_per_workload(documents):
            sys.exit(f"INVALID {file}: {error}")


if __name__ == "__main__":
    main()
