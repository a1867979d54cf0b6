//! Replays the fuzz seeds and every kept fuzz input (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`) through the same harness the cargo-fuzz targets run, so a
//! crash found once stays fixed. Fuzzing itself: `fuzz/run.sh` (bounded time).

#[path = "../fuzz/src/harness.rs"]
#[allow(unreachable_pub, dead_code)]
mod harness;

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = loopwatch_e2e::repo_root().join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                let bytes = std::fs::read(&p).expect("read input");
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn otlp_http_body_kept_inputs() {
    let all = inputs("otlp_http_body");
    assert!(!all.is_empty(), "seeds exist");
    for (path, data) in all {
        eprintln!("replay {}", path.display());
        harness::otlp_http_body(&data);
    }
}

#[test]
fn config_kept_inputs() {
    let all = inputs("config");
    assert!(!all.is_empty(), "seeds exist");
    for (path, data) in all {
        eprintln!("replay {}", path.display());
        harness::config(&data);
    }
}

#[test]
fn otlp_http_body_structured_inputs() {
    // A few structured cases besides the byte corpus: every selector on empty and tiny bodies.
    for selector in 0u8..16 {
        for body in [&b""[..], b"\x0a\x00", b"{}", b"\x1f\x8b\x08\x00"] {
            let mut data = vec![selector];
            data.extend_from_slice(body);
            harness::otlp_http_body(&data);
        }
    }
}
