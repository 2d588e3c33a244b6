//! Parsed docker-compose.yml, Dockerfile and the shared setup of the compose checks.

use super::*;

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

pub(super) struct Compose {
    pub(super) doc: Yaml,
}

/// One `ports:` entry in short syntax: `[ip:]host:container`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Published {
    pub(super) ip: Option<String>,
    pub(super) host: u16,
    pub(super) container: u16,
}

/// One `volumes:` entry in short syntax: `source:target[:mode]`.
#[derive(Debug, Clone)]
pub(super) struct Mount {
    pub(super) source: String,
    pub(super) target: String,
    pub(super) read_only: bool,
}

impl Mount {
    /// A bind mount of a repository file (as opposed to a named volume).
    pub(super) fn is_bind(&self) -> bool {
        self.source.starts_with("./") || self.source.starts_with('/') || self.source == "."
    }
    /// The repository-relative path of a bind mount.
    pub(super) fn repo_path(&self) -> &str {
        self.source.trim_start_matches("./")
    }
}

impl Compose {
    pub(super) fn load() -> Compose {
        let doc: Yaml = serde_yaml::from_str(&read(COMPOSE))
            .unwrap_or_else(|e| panic!("{COMPOSE} is not valid YAML: {e}"));
        Compose { doc }
    }

    pub(super) fn service(&self, name: &str) -> &Yaml {
        let s = &self.doc["services"][name];
        assert!(s.is_mapping(), "{COMPOSE}: no service {name:?}");
        s
    }

    pub(super) fn service_names(&self) -> Vec<String> {
        self.doc["services"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{COMPOSE}: no services"))
            .keys()
            .map(|k| k.as_str().expect("service name").to_string())
            .collect()
    }

    pub(super) fn str_list(&self, service: &str, key: &str) -> Vec<String> {
        match &self.service(service)[key] {
            Yaml::Null => Vec::new(),
            Yaml::Sequence(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .unwrap_or_else(|| {
                            panic!("{COMPOSE}: {service}.{key}: use the short string syntax")
                        })
                        .to_string()
                })
                .collect(),
            other => panic!("{COMPOSE}: {service}.{key} is not a list: {other:?}"),
        }
    }

    pub(super) fn ports(&self, service: &str) -> Vec<Published> {
        self.str_list(service, "ports")
            .iter()
            .map(|p| {
                let parts: Vec<&str> = p.split(':').collect();
                let num = |s: &str| -> u16 {
                    s.parse()
                        .unwrap_or_else(|_| panic!("{COMPOSE}: {service}.ports {p:?}: bad port"))
                };
                match parts.as_slice() {
                    [host, container] => Published {
                        ip: None,
                        host: num(host),
                        container: num(container),
                    },
                    [ip, host, container] => Published {
                        ip: Some(ip.to_string()),
                        host: num(host),
                        container: num(container),
                    },
                    _ => panic!("{COMPOSE}: {service}.ports {p:?}: expected [ip:]host:container"),
                }
            })
            .collect()
    }

    /// The host port publishing `container_port` of `service`.
    pub(super) fn published(&self, service: &str, container_port: u16) -> Published {
        self.ports(service)
            .into_iter()
            .find(|p| p.container == container_port)
            .unwrap_or_else(|| {
                panic!(
                    "{COMPOSE}: service {service} does not publish container port {container_port}"
                )
            })
    }

    pub(super) fn mounts(&self, service: &str) -> Vec<Mount> {
        self.str_list(service, "volumes")
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                match parts.as_slice() {
                    [source, target] => Mount {
                        source: source.to_string(),
                        target: target.to_string(),
                        read_only: false,
                    },
                    [source, target, mode] => Mount {
                        source: source.to_string(),
                        target: target.to_string(),
                        read_only: mode.split(',').any(|m| m == "ro"),
                    },
                    _ => {
                        panic!("{COMPOSE}: {service}.volumes {v:?}: expected source:target[:mode]")
                    }
                }
            })
            .collect()
    }

    pub(super) fn mount_at(&self, service: &str, target: &str) -> Mount {
        self.mounts(service)
            .into_iter()
            .find(|m| m.target == target)
            .unwrap_or_else(|| panic!("{COMPOSE}: service {service} mounts nothing at {target}"))
    }

    pub(super) fn env(&self, service: &str, name: &str) -> Option<String> {
        match &self.service(service)["environment"] {
            Yaml::Mapping(map) => map.get(name).map(|v| match v {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                other => panic!("{COMPOSE}: {service}.environment.{name}: {other:?}"),
            }),
            Yaml::Sequence(items) => items.iter().find_map(|i| {
                i.as_str()?
                    .strip_prefix(&format!("{name}="))
                    .map(str::to_string)
            }),
            _ => None,
        }
    }

    pub(super) fn image(&self, service: &str) -> String {
        self.service(service)["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{COMPOSE}: service {service} has no image"))
            .to_string()
    }
}

/// The host side of a published port must be the loopback interface or unspecified.
pub(super) fn host_reachable(p: &Published) -> bool {
    matches!(p.ip.as_deref(), None | Some("127.0.0.1") | Some("0.0.0.0"))
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

#[derive(Debug, Clone)]
pub(super) struct Instruction {
    pub(super) keyword: String,
    pub(super) args: String,
}

#[derive(Debug)]
pub(super) struct Stage {
    /// `FROM <image> [AS <name>]`
    pub(super) image: String,
    pub(super) name: Option<String>,
    pub(super) instructions: Vec<Instruction>,
}

impl Stage {
    pub(super) fn all(&self, keyword: &str) -> impl Iterator<Item = &str> {
        let keyword = keyword.to_string();
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }

    pub(super) fn last(&self, keyword: &str) -> Option<&str> {
        self.all(keyword).last()
    }

    /// Final WORKDIR (absolute paths only, as used here).
    pub(super) fn workdir(&self) -> Option<&str> {
        self.last("WORKDIR")
    }

    /// A JSON (exec form) instruction such as CMD or ENTRYPOINT.
    pub(super) fn exec_form(&self, keyword: &str) -> Vec<String> {
        let args = self
            .last(keyword)
            .unwrap_or_else(|| panic!("{DOCKERFILE}: the runtime stage has no {keyword}"));
        serde_json::from_str(args).unwrap_or_else(|e| {
            panic!("{DOCKERFILE}: {keyword} {args} must be in exec (JSON) form so signals reach tenantgate: {e}")
        })
    }
}

/// Splits the Dockerfile into stages of instructions: comment lines dropped, `\` continuations
/// joined.
pub(super) fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.trim().is_empty(),
        "{DOCKERFILE} ends inside a continuation"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args.split(' ').collect();
            let (image, name) = match words.as_slice() {
                [image] => (image.to_string(), None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    (image.to_string(), Some(name.to_string()))
                }
                _ => panic!("{DOCKERFILE}: cannot read FROM {args}"),
            };
            stages.push(Stage {
                image,
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{DOCKERFILE}: {keyword} before the first FROM"))
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    stages
}

/// `COPY [--from=x] [--chown=…] src… dest` → (from, sources, dest).
pub(super) fn parse_copy(args: &str) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut paths = Vec::new();
    for word in args.split(' ') {
        if let Some(f) = word.strip_prefix("--from=") {
            from = Some(f.to_string());
        } else if !word.starts_with("--") {
            paths.push(word.to_string());
        }
    }
    let dest = paths.pop().expect("COPY destination");
    (from, paths, dest)
}

// ---------------------------------------------------------------------------------------------
// Workspace manifests

pub(super) fn toml_file(rel: &str) -> toml::Value {
    toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub(super) fn workspace_members() -> Vec<String> {
    toml_file("Cargo.toml")["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| m.as_str().expect("member").to_string())
        .collect()
}

/// (member dir, package name, [[bin]] names) of every workspace member.
pub(super) fn packages() -> Vec<(String, String, Vec<String>)> {
    workspace_members()
        .into_iter()
        .map(|dir| {
            let manifest = toml_file(&format!("{dir}/Cargo.toml"));
            let name = manifest["package"]["name"]
                .as_str()
                .expect("package.name")
                .to_string();
            let bins = manifest
                .get("bin")
                .and_then(|b| b.as_array())
                .map(|bins| {
                    bins.iter()
                        .filter_map(|b| b.get("name")?.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (dir, name, bins)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checks

/// What the compose file, the Dockerfile and the container config say, read once per test.
pub(super) struct Setup {
    pub(super) compose: Compose,
    pub(super) stages: Vec<Stage>,
    /// Path of the config inside the container (Dockerfile CMD `-c`).
    pub(super) config_target: String,
    /// Repository path of the mounted config.
    pub(super) config_source: String,
    pub(super) config: Config,
    pub(super) demo: Config,
}

pub(super) fn setup() -> Setup {
    let compose = Compose::load();
    let stages = parse_dockerfile(&read(DOCKERFILE));
    let runtime = stages.last().expect("a stage");
    let cmd = runtime.exec_form("CMD");
    let c = cmd
        .iter()
        .position(|a| a == "-c" || a == "--config")
        .unwrap_or_else(|| panic!("{DOCKERFILE}: CMD {cmd:?} names no -c config"));
    let config_target = cmd
        .get(c + 1)
        .unwrap_or_else(|| panic!("{DOCKERFILE}: CMD {cmd:?}: -c without a path"))
        .clone();
    let mount = compose.mount_at("tenantgate", &config_target);
    assert!(
        mount.is_bind(),
        "the config at {config_target} must be a file of the repository"
    );
    assert!(mount.read_only, "mount the configuration read-only (:ro)");
    let config_source = mount.repo_path().to_string();
    let config = load_config(&config_source);
    let demo = load_config(DEMO_CONFIG);
    Setup {
        compose,
        stages,
        config_target,
        config_source,
        config,
        demo,
    }
}
