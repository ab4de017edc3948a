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
    try_render(release, overrides).unwrap_or_else(|e| panic!("{e}"))
}

/// [`render`], returning the first template's error (a `fail` included).
fn try_render(
    release: &str,
    overrides: &Value,
) -> Result<(BTreeMap<String, Option<Value>>, String), String> {
    let chart = yaml_file("Chart.yaml");
    let mut values = yaml_file("values.yaml");
    merge(&mut values, overrides);
    // The chart's files/, for .Files.Get.
    let mut files = serde_json::Map::new();
    if let Ok(entries) = std::fs::read_dir(chart_dir().join("files")) {
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            files.insert(format!("files/{name}"), Value::String(text));
        }
    }
    let ctx = json!({
        "Files": files,
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
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let src = std::fs::read_to_string(&path).unwrap();
        if name == "NOTES.txt" {
            notes = t.render(&src, &ctx).map_err(|e| format!("{name}: {e}"))?;
        } else if name.ends_with(".yaml") {
            let rendered = t.render(&src, &ctx).map_err(|e| format!("{name}: {e}"))?;
            let doc = (!rendered.trim().is_empty()).then(|| {
                serde_norway::from_str::<Value>(&rendered)
                    .unwrap_or_else(|e| panic!("{name} is not YAML ({e}):\n{rendered}"))
            });
            out.insert(name, doc);
        }
    }
    Ok((out, notes))
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
    assert!(!volumes.contains_key("db-password"));
    assert!(
        spec.get("affinity").is_none(),
        "no anti-affinity for one pod"
    );
    assert!(
        docs["pdb.yaml"].is_none(),
        "no PodDisruptionBudget for one pod"
    );
    for operator_resource in ["servicemonitor.yaml", "prometheusrule.yaml"] {
        assert!(
            docs[operator_resource].is_none(),
            "{operator_resource} is off by default"
        );
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

/// With the Prometheus Operator flags: a ServiceMonitor that scrapes the
/// Service's metrics port as job "acmeproxy", and a PrometheusRule whose
/// groups are those of contrib/prometheus/acmeproxy-rules.yml; both carry
/// the labels asked for.
#[test]
fn chart_renders_the_prometheus_operator_resources() {
    let selector = json!({"release": "kube-prometheus-stack"});
    let (docs, _) = render(
        "ra",
        &json!({
            "serviceMonitor": {"enabled": true, "labels": selector, "interval": "15s"},
            "prometheusRule": {"enabled": true, "labels": selector},
        }),
    );
    let name = "ra-acmeproxy";
    let get = |f: &str| docs[f].as_ref().unwrap_or_else(|| panic!("{f} is empty"));
    let svc = get("service.yaml");

    let sm = get("servicemonitor.yaml");
    check_meta(sm, "ServiceMonitor", name);
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    // It selects the Service by labels the Service carries.
    let wanted = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    assert!(!wanted.is_empty());
    for (k, v) in wanted {
        assert_eq!(&svc["metadata"]["labels"][k], v, "service label {k}");
    }
    // The job is named by a Service label whose value contains "acmeproxy",
    // as AcmeproxyTargetDown's job=~".*acmeproxy.*" needs.
    let job_label = sm["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(svc["metadata"]["labels"][job_label], "acmeproxy");
    let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["interval"], "15s");
    assert_eq!(ep["scrapeTimeout"], "10s");
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == ep["port"]),
        "the endpoint's port {} is a port of the Service",
        ep["port"]
    );

    let rule = get("prometheusrule.yaml");
    check_meta(rule, "PrometheusRule", name);
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let shipped = repo().join("contrib/prometheus/acmeproxy-rules.yml");
    let shipped_text = std::fs::read_to_string(&shipped).unwrap();
    let shipped: Value = serde_norway::from_str(&shipped_text).unwrap();
    assert_eq!(
        rule["spec"], shipped,
        "the PrometheusRule holds the shipped rules"
    );
    assert!(rule["spec"]["groups"].as_array().unwrap().len() >= 2);
    // The chart's copy is the shipped file, byte for byte.
    assert_eq!(
        std::fs::read_to_string(chart_dir().join("files/acmeproxy-rules.yml")).unwrap(),
        shipped_text,
        "contrib/helm/acmeproxy/files/acmeproxy-rules.yml differs from contrib/prometheus/acmeproxy-rules.yml: copy it"
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

/// The PostgreSQL values of docs/admin.md: 3 replicas, an externalcas upstream.
fn postgres_values() -> Value {
    json!({
        "replicaCount": 3,
        "postgresql": {
            "enabled": true,
            "dataSource": "postgresql://acmeproxy@postgres.db.svc:5432/?sslmode=verify-full",
            "passwordSecret": {"name": "acmeproxy-db", "key": "password"},
        },
        "config": {
            "authority": {
                "type": "externalcas",
                "config": {"ca_url": "https://ca.example.test/acme/directory"},
            },
        },
    })
}

/// ca.json from a rendered secret.yaml.
fn ca_json(docs: &BTreeMap<String, Option<Value>>) -> Value {
    let secret = docs["secret.yaml"].as_ref().expect("secret.yaml is empty");
    serde_json::from_str(secret["stringData"]["ca.json"].as_str().unwrap()).unwrap()
}

#[test]
fn chart_runs_replicas_on_postgresql() {
    let (docs, notes) = render("ra", &postgres_values());
    let name = "ra-acmeproxy";
    let get = |f: &str| docs[f].as_ref().unwrap_or_else(|| panic!("{f} is empty"));

    // ca.json: the postgresql db block, the password only as a file name;
    // the server accepts it (with the file present where it points).
    check_meta(get("secret.yaml"), "Secret", name);
    let config = ca_json(&docs);
    assert_eq!(
        config["db"],
        json!({
            "type": "postgresql",
            "dataSource": "postgresql://acmeproxy@postgres.db.svc:5432/?sslmode=verify-full",
            "database": "acmeproxy",
            "passwordFile": "/etc/acmeproxy-db/password",
        })
    );
    assert_eq!(config["authority"]["type"], "externalcas");
    assert_eq!(config["dataDir"], "/var/lib/acmeproxy");
    // The chart never sees the password: no user:password@ in the URL, no
    // password= parameter, no password key (the db block above is exact).
    let all = serde_json::to_string(&docs).unwrap().to_lowercase();
    assert!(
        !all.contains("://acmeproxy:") && !all.contains("password="),
        "a password in a manifest: {all}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("password");
    std::fs::write(&pw, "not-used-here\n").unwrap();
    let mut local = config.clone();
    local["db"]["passwordFile"] = json!(pw);
    let conf = tmp.path().join("ca.json");
    std::fs::write(&conf, serde_json::to_string_pretty(&local).unwrap()).unwrap();
    check_config(&conf);

    // No PVC; 3 replicas, rolled one at a time, spread across nodes.
    assert!(docs["pvc.yaml"].is_none(), "no PVC on PostgreSQL");
    let deploy = get("deployment.yaml");
    check_meta(deploy, "Deployment", name);
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        deploy["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let selector = &deploy["spec"]["selector"]["matchLabels"];
    let spec = &deploy["spec"]["template"]["spec"];
    let term =
        &spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        term["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        &term["podAffinityTerm"]["labelSelector"]["matchLabels"],
        selector
    );

    // The data directory is an emptyDir; the password Secret's one key is
    // mounted read-only, mode 0400, where passwordFile points.
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(volumes["data"], &json!({"name": "data", "emptyDir": {}}));
    assert_eq!(
        volumes["db-password"]["secret"],
        json!({"secretName": "acmeproxy-db",
               "items": [{"key": "password", "path": "password", "mode": 0o400}]})
    );
    assert_eq!(volumes["config"]["secret"]["secretName"], name);
    let c = &spec["containers"][0];
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m))
        .collect();
    assert_eq!(
        mounts["/etc/acmeproxy-db"],
        &json!({"name": "db-password", "mountPath": "/etc/acmeproxy-db", "readOnly": true})
    );
    assert_eq!(mounts["/var/lib/acmeproxy"]["name"], "data");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");

    // A PodDisruptionBudget over the same pods.
    let pdb = get("pdb.yaml");
    check_meta(pdb, "PodDisruptionBudget", name);
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    assert!(notes.contains("3 replica(s) on PostgreSQL"), "{notes}");

    // Configurable: another budget, none, an explicit affinity.
    let mut v = postgres_values();
    v["podDisruptionBudget"] = json!({"maxUnavailable": 2});
    v["affinity"] = json!({"nodeAffinity": {"x": 1}});
    let (docs, _) = render("ra", &v);
    assert_eq!(
        docs["pdb.yaml"].as_ref().unwrap()["spec"]["maxUnavailable"],
        2
    );
    let spec = &docs["deployment.yaml"].as_ref().unwrap()["spec"]["template"]["spec"];
    assert_eq!(spec["affinity"], json!({"nodeAffinity": {"x": 1}}));
    v["podDisruptionBudget"]["enabled"] = json!(false);
    assert!(render("ra", &v).0["pdb.yaml"].is_none());

    // One replica on PostgreSQL (softcas allowed): rolling, no PVC, no PDB;
    // a maxConnections under config.db is kept beside the generated keys.
    let mut v = postgres_values();
    v["replicaCount"] = json!(1);
    v["config"] = json!({"db": {"maxConnections": 8}});
    let (docs, _) = render("ra", &v);
    let config = ca_json(&docs);
    assert_eq!(config["db"]["type"], "postgresql");
    assert_eq!(config["db"]["maxConnections"], 8);
    assert_eq!(config["authority"]["type"], "softcas");
    let deploy = docs["deployment.yaml"].as_ref().unwrap();
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(deploy["spec"]["template"]["spec"].get("affinity").is_none());
    assert!(docs["pdb.yaml"].is_none() && docs["pvc.yaml"].is_none());
}

#[test]
fn chart_refuses_replicas_it_cannot_run() {
    let refused = |what: &str, v: &Value, needles: &[&str]| {
        let Err(e) = try_render("ra", v) else {
            panic!("{what}: rendered")
        };
        for n in needles {
            assert!(e.contains(n), "{what}: no {n:?} in {e}");
        }
        println!("{what}: {e}");
    };
    refused(
        "sled with 3 replicas",
        &json!({"replicaCount": 3}),
        &[
            "replicaCount > 1 needs postgresql.enabled",
            "sled",
            "one process on one disk",
        ],
    );
    let mut v = postgres_values();
    v["config"]["authority"] = yaml_file("values.yaml")["config"]["authority"].clone();
    refused(
        "softcas with 3 replicas",
        &v,
        &["replicaCount > 1 needs an external upstream", "softcas"],
    );
    let mut v = postgres_values();
    v["postgresql"]["dataSource"] = json!("");
    refused("no dataSource", &v, &["postgresql.dataSource"]);
    let mut v = postgres_values();
    v["postgresql"]["passwordSecret"]["name"] = json!("");
    refused("no password Secret", &v, &["postgresql.passwordSecret"]);
    // One replica: sled and softcas are fine (the defaults).
    assert!(try_render("ra", &json!({"replicaCount": 1})).is_ok());
}

/// docs/admin.md's `values-ha.yaml` renders, and its ca.json passes
/// check-config.
#[test]
fn chart_renders_the_admin_guide_ha_values() {
    let doc = std::fs::read_to_string(repo().join("docs/admin.md")).unwrap();
    let after = doc
        .split_once("`values-ha.yaml`:\n\n```yaml\n")
        .expect("docs/admin.md has a values-ha.yaml block")
        .1;
    let yaml = after.split_once("```").unwrap().0;
    let values: Value = serde_norway::from_str(yaml).unwrap();
    let (docs, _) = render("acmeproxy", &values);
    let deploy = docs["deployment.yaml"].as_ref().unwrap();
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert!(docs["pdb.yaml"].is_some() && docs["pvc.yaml"].is_none());
    let mut config = ca_json(&docs);
    assert_eq!(config["db"]["passwordFile"], "/etc/acmeproxy-db/password");
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("password");
    std::fs::write(&pw, "x\n").unwrap();
    config["db"]["passwordFile"] = json!(pw);
    let conf = tmp.path().join("ca.json");
    std::fs::write(&conf, config.to_string()).unwrap();
    check_config(&conf);
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

    // Replicas on PostgreSQL: a PDB and no PVC; sled with replicas refused.
    let pg = [
        "replicaCount=3",
        "postgresql.enabled=true",
        "postgresql.dataSource=postgresql://acmeproxy@postgres.db.svc:5432/",
        "postgresql.passwordSecret.name=acmeproxy-db",
        "config.authority.type=externalcas",
        "config.authority.config.ca_url=https://ca.example.test/acme/directory",
    ];
    let out = Command::new("helm")
        .args(["template", "ra"])
        .arg(chart_dir())
        .args(pg.iter().flat_map(|s| ["--set", s]))
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template:\n{}", text(&out));
    let rendered = String::from_utf8(out.stdout).unwrap();
    assert!(rendered.contains("kind: PodDisruptionBudget"), "{rendered}");
    assert!(
        !rendered.contains("kind: PersistentVolumeClaim"),
        "{rendered}"
    );
    let out = Command::new("helm")
        .args(["template", "ra"])
        .arg(chart_dir())
        .args(["--set", "replicaCount=3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("one process on one disk"),
        "{}",
        text(&out)
    );
}
