//! The crate's modules depend one way: no module imports one that (directly or through
//! others) imports it. Read from the sources: every `crate::name` path outside comments and
//! test modules is an edge to the top-level module `name`; a `crate::Type` path is an edge to
//! the module that defines `pub … Type`. The root (`lib.rs`) only declares and re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`threads_off.rs` stands in for `threads`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("component");
    let name = first.as_os_str().to_string_lossy();
    let name = name.trim_end_matches(".rs");
    match name {
        "threads_off" => "threads".to_owned(),
        n => n.to_owned(),
    }
}

/// The file's code without comments and without its `#[cfg(test)] mod tests` part.
fn code(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers that follow `crate::` in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .filter(|s: &String| !s.is_empty())
        .collect()
}

/// Names the file defines as `pub struct|enum|const|fn|type|trait NAME` at the start of a line.
fn public_items(code: &str) -> Vec<String> {
    const KINDS: [&str; 6] = ["struct ", "enum ", "const ", "fn ", "type ", "trait "];
    code.lines()
        .filter_map(|l| l.strip_prefix("pub "))
        .filter_map(|l| KINDS.iter().find_map(|k| l.strip_prefix(k)))
        .map(|l| {
            l.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            (module_of(&src, f), code(&text))
        })
        .collect();
    let mut defined = BTreeMap::new();
    for (m, c) in &texts {
        for item in public_items(c) {
            defined.entry(item).or_insert_with(|| m.clone());
        }
    }
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, c) in &texts {
        let deps = g.entry(m.clone()).or_default();
        for p in crate_paths(c) {
            let target = if p.starts_with(char::is_uppercase) {
                defined.get(&p).cloned()
            } else {
                Some(p)
            };
            if let Some(t) = target.filter(|t| t != m) {
                deps.insert(t);
            }
        }
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == to {
                return true;
            }
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let g = graph();
    assert!(g.len() > 10, "the crate's modules were read: {g:?}");
    assert!(g["probe"].contains("live"), "edges were read: {g:?}");
    let cycles: Vec<(String, String)> = g
        .iter()
        .flat_map(|(m, deps)| deps.iter().map(move |d| (m.clone(), d.clone())))
        .filter(|(m, d)| reaches(&g, d, m))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles: {cycles:?}\ngraph: {g:#?}"
    );
    for (m, deps) in &g {
        assert!(
            m == "lib" || !deps.contains("start"),
            "only the root uses the wiring: {m} imports start"
        );
    }
}

/// The measuring subsystems produce values; only the instrument registry (and the pipeline,
/// the tracing bridge and the features' own instruments) turns them into OpenTelemetry.
#[test]
fn the_measuring_subsystems_know_nothing_of_opentelemetry() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let measuring = [
        "probe", "workers", "heap", "process", "tasks", "live", "runtime", "threads",
    ];
    let mut read = BTreeSet::new();
    let mut offenders = Vec::new();
    for f in &files {
        let m = module_of(&src, f);
        if !measuring.contains(&m.as_str()) {
            continue;
        }
        read.insert(m.clone());
        let c = code(&std::fs::read_to_string(f).expect("read"));
        if c.contains("opentelemetry") {
            offenders.push(f.display().to_string());
        }
    }
    assert_eq!(
        read.len(),
        measuring.len(),
        "every subsystem was read: {read:?}"
    );
    assert!(offenders.is_empty(), "OpenTelemetry in {offenders:?}");
    let g = graph();
    assert!(
        g["start"].contains("instruments"),
        "the wiring registers the instruments: {:?}",
        g["start"]
    );
}
