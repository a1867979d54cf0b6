//! The status page at `/` in a real headless browser ([`loopwatch_e2e::chromium`]; missing ->
//! the test fails). Asserts on the rendered DOM:
//! service names, states, reasons and one chart line per service in each chart; saves a
//! screenshot to `target/artifacts/status-page.png`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use loopwatch_agent::config::Config;
use loopwatch_e2e::{chromium, run_chromium};

#[test]
fn status_page_shows_services_states_reasons_and_charts() {
    let bin = chromium();
    let agent = TestAgent::start(
        Config::builder()
            .hold(Duration::from_secs(600))
            .stale_after(Duration::from_secs(600)),
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("checkout", "pod-a", 0.004, 0.0, 0.35)),
        200
    );
    assert_eq!(
        agent.post_metrics(&tokio_export("payments", "pod-b", 0.02, 1.204, 0.97)),
        200
    );
    let (code, page) = agent.get("/");
    assert_eq!(code, 200);
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    let (code, js) = agent.get("/status.js");
    assert_eq!(code, 200);
    assert!(js.contains("v1/status"));

    let profile = std::env::temp_dir().join(format!("lw-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let url = agent.admin("/?interval=200");
    let dom = run_chromium(
        &bin,
        &profile.join("dom"),
        &["--virtual-time-budget=3000".into(), "--dump-dom".into()],
        &url,
    );
    let row = |service: &str, instance: &str, state: &str| {
        dom.contains(&format!(
            r#"data-service="{service}" data-instance="{instance}" data-state="{state}""#
        ))
    };
    assert!(row("checkout", "pod-a", "ok"), "{dom}");
    assert!(row("payments", "pod-b", "unhealthy"), "{dom}");
    assert!(
        dom.contains(r#"<div class="reason">lag 1.204 s &gt;= 0.250 s</div>"#),
        "reason missing: {dom}"
    );
    assert!(dom.contains("2 service(s)"), "{dom}");
    for chart in ["chart-lag", "chart-utilization", "chart-pressure"] {
        let start = dom.find(&format!(r#"id="{chart}""#)).expect(chart);
        let end = dom[start..]
            .find("</svg>")
            .map(|e| start + e)
            .expect("svg end");
        let svg = &dom[start..end];
        for service in ["checkout / pod-a", "payments / pod-b"] {
            assert!(
                svg.contains(&format!(
                    r#"<polyline class="series" data-service="{service}""#
                )),
                "{chart} has no line for {service}: {svg}"
            );
        }
    }
    assert!(!dom.contains("cannot load"), "{dom}");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &bin,
        &profile.join("shot"),
        &[
            "--virtual-time-budget=3000".into(),
            "--window-size=1400,900".into(),
            format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let _ = std::fs::remove_dir_all(&profile);
}
