//! Parses every deployment file under `deploy/` and checks the fields that tie them together:
//! driver name, socket paths, sidecar flags, storage-class provisioners, RBAC references and
//! kustomize resources.

use pmem_csi::DEFAULT_DRIVER_NAME as DRIVER;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// All documents of all plain (non-template) manifests, with their file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("kubernetes"), &mut files);
    assert!(files.len() >= 10, "too few manifests: {files:?}");
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.clone(), v));
            }
        }
    }
    docs
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {v:?}"))
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = match k.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*k],
        };
    }
    cur
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn container<'a>(ds: &'a Value, name: &str) -> &'a Value {
    get(ds, &["spec", "template", "spec", "containers"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn every_manifest_parses_and_has_kind_and_name() {
    for (f, d) in documents() {
        assert!(d["kind"].as_str().is_some(), "{}: no kind", f.display());
        if d["kind"].as_str() != Some("Kustomization") {
            assert!(
                d["apiVersion"].as_str().is_some(),
                "{}: no apiVersion",
                f.display()
            );
            assert!(
                get(&d, &["metadata", "name"]).as_str().is_some(),
                "{}: no name",
                f.display()
            );
        }
    }
}

#[test]
fn csidriver_matches_the_binary() {
    let docs = documents();
    let drivers = of_kind(&docs, "CSIDriver");
    assert_eq!(drivers.len(), 1);
    let d = drivers[0];
    assert_eq!(s(d, &["metadata", "name"]), DRIVER);
    assert_eq!(get(d, &["spec", "attachRequired"]).as_bool(), Some(false));
    assert_eq!(get(d, &["spec", "podInfoOnMount"]).as_bool(), Some(true));
    assert_eq!(get(d, &["spec", "storageCapacity"]).as_bool(), Some(true));
    let modes: HashSet<&str> = get(d, &["spec", "volumeLifecycleModes"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(modes, HashSet::from(["Persistent", "Ephemeral"]));
}

#[test]
fn daemonset_wires_driver_and_sidecars() {
    let docs = documents();
    let ds = of_kind(&docs, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = ds[0];
    let driver = container(ds, "pmem-driver");
    let dargs = args(driver);
    assert!(
        dargs.contains(&"--endpoint=unix:///csi/csi.sock".to_string()),
        "{dargs:?}"
    );
    assert!(
        dargs.contains(&format!("--driver-name={DRIVER}")),
        "{dargs:?}"
    );
    assert!(dargs.iter().any(|a| a == "--device-mode=lvm"), "{dargs:?}");
    assert!(dargs.iter().any(|a| a == "--node-id=$(KUBE_NODE_NAME)"));
    assert_eq!(
        get(driver, &["securityContext", "privileged"]).as_bool(),
        Some(true)
    );

    // Every sidecar talks to the driver's socket through the same volume.
    let socket_mount = |c: &Value| -> String {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some("socket-dir"))
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no socket-dir in {:?}", c["name"]))
    };
    assert_eq!(socket_mount(driver), "/csi");
    for name in [
        "driver-registrar",
        "external-provisioner",
        "external-resizer",
    ] {
        let c = container(ds, name);
        assert_eq!(socket_mount(c), "/csi", "{name}");
        assert!(
            args(c).contains(&"--csi-address=/csi/csi.sock".to_string()),
            "{name}"
        );
    }
    // kubelet finds the socket at the host path of socket-dir.
    let vols = get(ds, &["spec", "template", "spec", "volumes"])
        .as_sequence()
        .unwrap();
    let host_path = |name: &str| -> String {
        vols.iter()
            .find(|v| v["name"].as_str() == Some(name))
            .map(|v| s(v, &["hostPath", "path"]).to_string())
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let sock_dir = host_path("socket-dir");
    assert_eq!(sock_dir, format!("/var/lib/kubelet/plugins/{DRIVER}"));
    assert!(args(container(ds, "driver-registrar"))
        .contains(&format!("--kubelet-registration-path={sock_dir}/csi.sock")));
    assert_eq!(
        host_path("registration-dir"),
        "/var/lib/kubelet/plugins_registry"
    );
    // Mounts made by the driver must propagate to kubelet.
    for m in driver["volumeMounts"].as_sequence().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        if path.starts_with("/var/lib/kubelet") {
            assert_eq!(
                m["mountPropagation"].as_str(),
                Some("Bidirectional"),
                "{path}"
            );
        }
    }
    let prov = args(container(ds, "external-provisioner"));
    for flag in [
        "--node-deployment",
        "--strict-topology",
        "--enable-capacity",
    ] {
        assert!(
            prov.iter().any(|a| a == flag),
            "provisioner lacks {flag}: {prov:?}"
        );
    }
    let env: Vec<&str> = container(ds, "external-provisioner")["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"NODE_NAME"),
        "--node-deployment needs NODE_NAME"
    );

    // The service account exists and is bound.
    let sa = s(ds, &["spec", "template", "spec", "serviceAccountName"]);
    let ns = s(ds, &["metadata", "namespace"]);
    assert!(of_kind(&docs, "ServiceAccount")
        .iter()
        .any(|a| s(a, &["metadata", "name"]) == sa && s(a, &["metadata", "namespace"]) == ns));
    assert!(of_kind(&docs, "Namespace")
        .iter()
        .any(|n| s(n, &["metadata", "name"]) == ns));
}

#[test]
fn rbac_bindings_reference_existing_roles_and_accounts() {
    let docs = documents();
    let roles: HashSet<(&str, &str)> = of_kind(&docs, "ClusterRole")
        .into_iter()
        .map(|r| ("ClusterRole", s(r, &["metadata", "name"])))
        .chain(
            of_kind(&docs, "Role")
                .into_iter()
                .map(|r| ("Role", s(r, &["metadata", "name"]))),
        )
        .collect();
    let accounts: HashSet<&str> = of_kind(&docs, "ServiceAccount")
        .into_iter()
        .map(|a| s(a, &["metadata", "name"]))
        .collect();
    let bindings: Vec<&Value> = of_kind(&docs, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(&docs, "RoleBinding"))
        .collect();
    assert!(bindings.len() >= 3);
    for b in bindings {
        let role = (s(b, &["roleRef", "kind"]), s(b, &["roleRef", "name"]));
        assert!(roles.contains(&role), "binding to missing {role:?}");
        for subj in b["subjects"].as_sequence().unwrap() {
            assert!(
                accounts.contains(s(subj, &["name"])),
                "missing account {subj:?}"
            );
        }
    }
    // The provisioner can manage capacity objects.
    let text = serde_yaml::to_string(&of_kind(&docs, "Role")).unwrap();
    assert!(text.contains("csistoragecapacities"));
}

#[test]
fn storage_classes_use_this_driver_and_valid_parameters() {
    let docs = documents();
    let scs = of_kind(&docs, "StorageClass");
    let names: HashSet<&str> = scs.iter().map(|c| s(c, &["metadata", "name"])).collect();
    for want in [
        "pmem-csi-sc-ext4",
        "pmem-csi-sc-xfs",
        "pmem-csi-sc-lvm",
        "pmem-csi-sc-direct",
    ] {
        assert!(names.contains(want), "missing {want}");
    }
    for sc in &scs {
        assert_eq!(s(sc, &["provisioner"]), DRIVER);
        assert_eq!(s(sc, &["volumeBindingMode"]), "WaitForFirstConsumer");
        // The driver accepts every parameter (same parser as CreateVolume).
        let params: std::collections::HashMap<String, String> = sc["parameters"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        pmem_csi::driver::parse_params(&params, pmem_csi::device::DeviceMode::Fake, false)
            .unwrap_or_else(|e| panic!("{}: {e}", s(sc, &["metadata", "name"])));
    }
    // Examples only use storage classes that exist, and inline volumes use this driver.
    for (f, d) in &docs {
        let text = serde_yaml::to_string(d).unwrap();
        for line in text.lines() {
            if let Some(sc) = line.trim().strip_prefix("storageClassName: ") {
                assert!(
                    names.contains(sc),
                    "{}: unknown storage class {sc}",
                    f.display()
                );
            }
        }
    }
    let eph = docs
        .iter()
        .find(|(f, _)| f.ends_with("examples/memcached-ephemeral.yaml"))
        .map(|(_, d)| d)
        .unwrap();
    let vol = &get(eph, &["spec", "template", "spec", "volumes"])[0];
    assert_eq!(s(vol, &["csi", "driver"]), DRIVER);
    let size = s(vol, &["csi", "volumeAttributes", "size"]);
    pmem_csi::validate::parse_quantity(size).unwrap();
    let mc = &get(eph, &["spec", "template", "spec", "containers"])[0];
    assert!(args(mc)
        .iter()
        .any(|a| a.starts_with("--memory-file=/data/")));
    assert!(docs
        .iter()
        .any(|(_, d)| d["kind"].as_str() == Some("StatefulSet")));
    let kubedb = of_kind(&docs, "Memcached");
    assert_eq!(kubedb.len(), 1);
    assert!(get(kubedb[0], &["spec", "dataVolume"]).is_mapping());
}

#[test]
fn kustomizations_list_existing_files() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("kubernetes"), &mut files);
    let mut n = 0;
    for f in files.iter().filter(|f| f.ends_with("kustomization.yaml")) {
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for r in v["resources"].as_sequence().unwrap() {
            let p = f.parent().unwrap().join(r.as_str().unwrap());
            assert!(p.exists(), "{}: {} missing", f.display(), p.display());
            n += 1;
        }
    }
    assert!(n >= 8);
}

#[test]
fn direct_overlay_patches_the_right_arguments() {
    // The overlay's JSON patch addresses arguments by index: keep them in sync with the base.
    let docs = documents();
    let ds = of_kind(&docs, "DaemonSet")[0];
    let a = args(container(ds, "pmem-driver"));
    assert_eq!(a[3], "--device-mode=lvm");
    assert_eq!(a[4], "--lvm-setup");
    let overlay =
        std::fs::read_to_string(deploy_dir().join("kubernetes/overlays/direct/kustomization.yaml"))
            .unwrap();
    let k: Value = serde_yaml::from_str(&overlay).unwrap();
    let patch: Value = serde_yaml::from_str(k["patches"][0]["patch"].as_str().unwrap()).unwrap();
    let ops = patch.as_sequence().unwrap();
    assert_eq!(
        s(&ops[0], &["path"]),
        "/spec/template/spec/containers/0/args/3"
    );
    assert_eq!(s(&ops[0], &["value"]), "--device-mode=direct");
    assert_eq!(s(&ops[1], &["op"]), "remove");
    assert_eq!(
        s(&ops[1], &["path"]),
        "/spec/template/spec/containers/0/args/4"
    );
    assert_eq!(
        get(ds, &["spec", "template", "spec", "containers", "0", "name"]).as_str(),
        Some("pmem-driver")
    );
}

#[test]
fn helm_chart_is_consistent() {
    let chart = deploy_dir().join("helm/pmem-csi");
    let c: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(c["apiVersion"].as_str(), Some("v2"));
    assert_eq!(c["name"].as_str(), Some("pmem-csi"));
    let v: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    assert_eq!(v["driverName"].as_str(), Some(DRIVER));
    assert!(matches!(v["deviceMode"].as_str(), Some("lvm" | "direct")));
    let t = |name: &str| std::fs::read_to_string(chart.join("templates").join(name)).unwrap();
    assert!(t("csidriver.yaml").contains("name: {{ .Values.driverName }}"));
    assert!(t("storageclasses.yaml").contains("provisioner: {{ $.Values.driverName }}"));
    let ds = t("daemonset.yaml");
    for needle in [
        "--node-deployment",
        "--strict-topology",
        "--enable-capacity",
        "--kubelet-registration-path={{ $socketDir }}/csi.sock",
        "--endpoint=unix:///csi/csi.sock",
        "mountPropagation: Bidirectional",
    ] {
        assert!(ds.contains(needle), "daemonset template lacks {needle}");
    }
}

#[test]
fn dockerfile_builds_the_driver() {
    let d = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    assert!(d.contains("-p pmem-csi"));
    for pkg in ["e2fsprogs", "xfsprogs", "lvm2", "ndctl"] {
        assert!(d.contains(pkg), "image lacks {pkg}");
    }
}
