//! The status page tells what happened, opened only after the incident. A real
//! `example-service` blocks its runtime for 800 ms, then answers a burst of 500s; the page is
//! opened in headless Chromium more than 5 s later. From `/v1/history` and `/v1/status` it
//! shows the lag spike on the lag chart with the stall as a band, the incident with its
//! reasons in the list, the stack captured during the block naming the handler, and the
//! failing route at the top of the route table. Screenshots at
//! desktop and phone widths go to `target/artifacts/`.

use std::path::Path;
use std::time::Duration;

use loopwatch_e2e::{Agent, Service, chromium, client, repo_root, run_chromium, wait_for};

const BLOCK_MS: u64 = 800;
const FAILURES: usize = 40;
/// The example service's `/block` handler, as the captured stack names it.
const BLOCKING_FN: &str = "example_service::block";

/// The element of `dom` that starts with `open` (up to the end of its start tag).
fn start_tags<'a>(dom: &'a str, open: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    dom.match_indices(open)
        .map(move |(i, _)| &dom[i..i + dom[i..].find('>').unwrap_or(0)])
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

#[test]
fn the_page_opened_after_an_incident_shows_the_spike_the_incident_and_the_route() {
    let bin = chromium();
    let agent = Agent::start(&[]);
    let service = Service::start(&agent, "story");
    service.wait_ready_at(&agent);

    let c = client();
    for i in 0..20 {
        let r = c
            .get(format!("{}/items/{i}", service.url))
            .send()
            .expect("GET");
        assert_eq!(r.status(), 200);
    }
    let (code, _) = service.block_in_background(BLOCK_MS).join().expect("block");
    assert_eq!(code, 200);
    for _ in 0..FAILURES {
        let r = c.get(format!("{}/fail", service.url)).send().expect("GET");
        assert_eq!(r.status(), 500);
    }
    // The agent has heard of the failures (the next export), then the user comes 5 s later.
    wait_for(
        "the agent to count the failed requests",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = agent.service_status("story")?;
            let routes = s["routes"].as_array()?;
            let failed = routes
                .iter()
                .any(|r| r["route"] == "/fail" && r["requests"].as_u64() == Some(FAILURES as u64));
            // The stack captured during the block has reached the agent too.
            let stack = s["last_stalls"].to_string().contains(BLOCKING_FN);
            (failed && stack).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));

    let profile = std::env::temp_dir().join(format!("lw-story-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let url = format!("{}/?interval=500", agent.admin);
    let dom = run_chromium(
        &bin,
        &profile.join("dom"),
        &["--virtual-time-budget=3000".into(), "--dump-dom".into()],
        &url,
    );
    assert!(!dom.contains("cannot load"), "{dom}");

    // The lag spike: the chart's largest sample is the block, and the stall is a band.
    let lag_chart = start_tags(&dom, "<svg id=\"chart-lag\"")
        .next()
        .unwrap_or_else(|| panic!("no lag chart: {dom}"));
    let max: f64 = attr(lag_chart, "data-max")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no data-max: {lag_chart}"));
    assert!(
        max >= 0.5,
        "lag chart peaks at {max} s after an {BLOCK_MS} ms block"
    );
    let lag_svg = &dom[dom.find("<svg id=\"chart-lag\"").unwrap_or(0)..];
    let lag_svg = &lag_svg[..lag_svg.find("</svg>").unwrap_or(lag_svg.len())];
    assert!(
        lag_svg.contains("class=\"band band-stall\""),
        "no stall band on the lag chart: {lag_svg}"
    );
    assert!(
        lag_svg.contains("<polyline class=\"series\" data-service=\"story / "),
        "{lag_svg}"
    );

    // The incident in the list, with its reasons: the lag, then the failing route.
    let incidents = &dom[dom.find("id=\"incidents\"").expect("incidents table")..];
    let incidents = &incidents[..incidents.find("</table>").unwrap_or(incidents.len())];
    let unhealthy = incidents
        .split("<tr ")
        .find(|row| row.contains("data-kind=\"unhealthy\""))
        .unwrap_or_else(|| panic!("no unhealthy incident listed: {incidents}"));
    // Still unhealthy: the failures stay in `health.error_window` (30 s).
    assert!(unhealthy.contains("data-ongoing=\"true\""), "{unhealthy}");
    assert!(unhealthy.contains(", peak "), "{unhealthy}");
    assert!(
        unhealthy.contains("<div class=\"reason\">lag "),
        "the incident does not name the lag: {unhealthy}"
    );
    assert!(
        unhealthy.contains("route \"/fail\" error ratio")
            || incidents.contains("route &quot;/fail&quot; error ratio"),
        "the incident does not name the failing route: {incidents}"
    );

    // Who was blocking: the stack captured during the block names the handler.
    let stalls = &dom[dom.find("id=\"stalls\"").expect("stalls section")..];
    let stalls = &stalls[..stalls.find("<h2>").unwrap_or(stalls.len())];
    assert!(
        stalls.contains("<details class=\"stall\"") && stalls.contains(BLOCKING_FN),
        "the stall's stack does not name {BLOCKING_FN}: {stalls}"
    );

    // The failing route heads the route table, with its error ratio.
    let first_route = start_tags(&dom, "<tr class=\"route")
        .next()
        .unwrap_or_else(|| panic!("no route rows: {dom}"));
    assert_eq!(
        attr(first_route, "data-route"),
        Some("/fail"),
        "{first_route}"
    );
    assert_eq!(
        attr(first_route, "data-error-ratio"),
        Some("1"),
        "{first_route}"
    );

    let artifacts = repo_root().join("target/artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    for (name, size) in [("desktop", "1400,1000"), ("phone", "390,1400")] {
        let shot = artifacts.join(format!("status-story-{name}.png"));
        let _ = std::fs::remove_file(&shot);
        run_chromium(
            &bin,
            &profile.join(name),
            &[
                "--virtual-time-budget=3000".into(),
                "--hide-scrollbars".into(),
                format!("--window-size={size}"),
                format!("--screenshot={}", shot.display()),
            ],
            &url,
        );
        let png = std::fs::read(&shot).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG"),
            "{}: not a PNG",
            Path::new(&shot).display()
        );
    }
    let _ = std::fs::remove_dir_all(&profile);
}
