//! The source layout keeps the promise lib.rs's module map makes: every
//! top-level module uses only modules listed above it in the map, so there
//! is no import circle between top-level modules, and every module is in
//! the map. A change that makes a lower module reach up fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its non-test code names.
fn uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            // Unit tests may use anything: `tests.rs` files, and below
            // `#[cfg(test)]` in the others.
            if p.extension().is_none_or(|x| x != "rs") || p.ends_with("tests.rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let names = out.entry(top.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for item in group.split(',') {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        names.insert(name);
                    }
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
            names.remove(&top);
        }
    }
    out
}

/// The modules lib.rs's map names, in its order.
fn map_order(lib: &str) -> Vec<String> {
    let map = &lib[..lib.find("pub mod").unwrap()];
    let mut order = Vec::new();
    for part in map.split("[`").skip(1) {
        let name = &part[..part.find("`]").unwrap()];
        if !name.contains(':') && !order.iter().any(|m| m == name) {
            order.push(name.to_string());
        }
    }
    order
}

#[test]
fn every_module_uses_only_modules_above_it_in_the_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let order = map_order(&lib);
    let graph = uses(&root.join("src"));
    let pos = |m: &str| order.iter().position(|o| o == m);
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(at) = pos(module) else {
            wrong.push(format!("{module} is not in lib.rs's module map"));
            continue;
        };
        for u in used {
            if let Some(p) = pos(u) {
                if p > at {
                    wrong.push(format!("{module} uses {u}, which the map lists below it"));
                }
            }
        }
    }
    for m in &order {
        if !graph.contains_key(m) {
            wrong.push(format!("the map lists {m}, which is not a module in src/"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
