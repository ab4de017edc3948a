//! The Helm chart contrib/helm/acmeproxy: rendered with the subset renderer
//! (and with `helm template` + `helm lint` when helm is installed), every
//! manifest parsed as YAML, and the fields that matter checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use super::helm::Templates;
use super::{check_config, repo, text};

fn chart_dir() -> PathBuf {
    repo().join("contrib/helm/acmeproxy")
}

fn yaml_file(name: &str) -> Value {
    let text = std::fs::read_to_string(chart_dir().join(name)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Merges `over` into `base` (objects recursively, everything else replaced).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Renders every template for release `release` with `overrides` merged
/// into values.yaml: file name → parsed manifest (None when it rendered to
/// nothing), plus NOTES.txt as text.
fn render(release: &str, overrides: &Value) -> (BTreeMap<String, Option<Value>>, String) {
    let chart = yaml_file("Chart.yaml");
    let mut values = yaml_file("values.yaml");
    merge(&mut values, overrides);
    let ctx = json!({
        "Values": values,
        "Release": {"Name": release, "Namespace": "pki", "Service": "Helm"},
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart["appVersion"],
        },
    });
    let dir = chart_dir().join("templates");
    let mut t = Templates::default();
    t.add_helpers(&std::fs::read_to_string(dir.join("_helpers.tpl")).unwrap())
        .unwrap();
    let mut out = BTreeMap::new();
    let mut notes = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let src = std::fs::read_to_string(&path).unwrap();
        if name == "NOTES.txt" {
            notes = t
                .render(&src, &ctx)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.ends_with(".yaml") {
            let rendered = t
                .render(&src, &ctx)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let doc = (!rendered.trim().is_empty()).then(|| {
                serde_norway::from_str::<Value>(&rendered)
                    .unwrap_or_else(|e| panic!("{name} is not YAML ({e}):\n{rendered}"))
            });
            out.insert(name, doc);
        }
    }
    (out, notes)
}

/// The common shape of every manifest: kind, name, string labels.
fn check_meta(doc: &Value, kind: &str, name: &str) {
    assert_eq!(doc["kind"], kind);
    assert_eq!(doc["metadata"]["name"], name, "{kind}");
    let labels = doc["metadata"]["labels"].as_object().unwrap();
    assert!(
        labels.values().all(Value::is_string),
        "{kind} labels: {labels:?}"
    );
    assert_eq!(labels["app.kubernetes.io/name"], "acmeproxy");
}

#[test]
fn chart_metadata_matches_the_crate() {
    let chart = yaml_file("Chart.yaml");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "acmeproxy");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert!(chart["version"].as_str().unwrap().split('.').count() == 3);
}

#[test]
fn chart_renders_with_defaults() {
    let (docs, notes) = render("ra", &json!({}));
    let name = "ra-acmeproxy";
    let get = |f: &str| docs[f].as_ref().unwrap_or_else(|| panic!("{f} is empty"));

    // The Secret carries ca.json, which the server accepts.
    let secret = get("secret.yaml");
    check_meta(secret, "Secret", name);
    let ca_json = secret["stringData"]["ca.json"].as_str().unwrap();
    let config: Value = serde_json::from_str(ca_json).unwrap();
    assert_eq!(config, yaml_file("values.yaml")["config"]);
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("ca.json");
    std::fs::write(&conf, ca_json).unwrap();
    check_config(&conf);
    assert_eq!(config["address"], ":443");
    assert_eq!(config["metrics"]["address"], "0.0.0.0:9123");
    assert_eq!(config["dataDir"], "/var/lib/acmeproxy");
    assert_eq!(config["db"]["type"], "sled");

    let deploy = get("deployment.yaml");
    check_meta(deploy, "Deployment", name);
    assert_eq!(deploy["apiVersion"], "apps/v1");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let selector = &deploy["spec"]["selector"]["matchLabels"];
    let pod = &deploy["spec"]["template"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "pod label {k}");
    }
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_ne!(spec["securityContext"]["runAsUser"], 0);
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["image"],
        format!("acmeproxy:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(c["args"], json!(["/etc/acmeproxy/ca.json"]));
    assert_eq!(
        c["ports"],
        json!([
            {"name": "https", "containerPort": 443, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9123, "protocol": "TCP"}
        ])
    );
    for (probe, path) in [
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/health"),
        ("startupProbe", "/health"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "https", "{probe}");
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m))
        .collect();
    assert_eq!(mounts["/etc/acmeproxy"]["name"], "config");
    assert_eq!(mounts["/etc/acmeproxy"]["readOnly"], true);
    assert_eq!(mounts["/var/lib/acmeproxy"]["name"], "data");
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(volumes["config"]["secret"]["secretName"], name);
    assert_eq!(volumes["config"]["secret"]["defaultMode"], 0o440);
    assert_eq!(volumes["data"]["persistentVolumeClaim"]["claimName"], name);
    for m in mounts.values() {
        assert!(volumes.contains_key(m["name"].as_str().unwrap()));
    }

    let svc = get("service.yaml");
    check_meta(svc, "Service", name);
    assert_eq!(&svc["spec"]["selector"], selector);
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"},
            {"name": "metrics", "port": 9123, "targetPort": "metrics", "protocol": "TCP"}
        ])
    );

    let pvc = get("pvc.yaml");
    check_meta(pvc, "PersistentVolumeClaim", name);
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert!(pvc["spec"].get("storageClassName").is_none());
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    assert!(
        notes.contains("https://ra-acmeproxy.pki.svc:443/acme/acme/directory")
            && notes.contains(r#"now ["acmeproxy","acmeproxy.default.svc"]:"#),
        "{notes}"
    );
}

#[test]
fn chart_renders_with_existing_secret_and_claim() {
    let overrides = json!({
        "existingSecret": "my-ca-json",
        "image": {"repository": "registry.example/acmeproxy", "tag": "dev"},
        "persistence": {"existingClaim": "ra-data"},
        "service": {"type": "LoadBalancer", "port": 8443},
        "resources": {"limits": {"memory": "256Mi"}},
    });
    // A release name containing the chart's is used as it is.
    let (docs, _) = render("acmeproxy", &overrides);
    assert!(
        docs["secret.yaml"].is_none(),
        "no Secret with existingSecret"
    );
    assert!(docs["pvc.yaml"].is_none(), "no PVC with existingClaim");
    let deploy = docs["deployment.yaml"].as_ref().unwrap();
    check_meta(deploy, "Deployment", "acmeproxy");
    let spec = &deploy["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "registry.example/acmeproxy:dev");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    let vols = spec["volumes"].as_array().unwrap();
    assert!(vols.contains(
        &json!({"name": "config", "secret": {"secretName": "my-ca-json", "defaultMode": 0o440}})
    ));
    assert!(
        vols.contains(&json!({"name": "data", "persistentVolumeClaim": {"claimName": "ra-data"}}))
    );
    let svc = docs["service.yaml"].as_ref().unwrap();
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");

    let (docs, _) = render(
        "x",
        &json!({"persistence": {"storageClass": "fast-ssd", "size": "5Gi"}}),
    );
    let pvc = docs["pvc.yaml"].as_ref().unwrap();
    assert_eq!(pvc["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(pvc["metadata"]["name"], "x-acmeproxy");
}

/// `helm lint` and `helm template` when helm is on PATH (Debian packages no
/// helm, so usually this is skipped and the renderer above is the check).
#[test]
fn chart_with_helm_when_installed() {
    let Ok(version) = Command::new("helm").arg("version").output() else {
        eprintln!("SKIP helm lint/template: helm is not installed");
        return;
    };
    assert!(version.status.success());
    let lint = Command::new("helm")
        .arg("lint")
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(lint.status.success(), "helm lint:\n{}", text(&lint));
    let out = Command::new("helm")
        .args(["template", "ra"])
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template:\n{}", text(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let mut kinds: Vec<String> = rendered
        .split("\n---")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let v: Value = serde_norway::from_str(d).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["Deployment", "PersistentVolumeClaim", "Secret", "Service"]
    );
}
