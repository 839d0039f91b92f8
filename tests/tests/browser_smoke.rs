//! Proves the browser harness (`tollgate_e2e::browser`) before the dashboard's
//! own tests lean on it: real headless Chromium opens the real control
//! plane's Swagger UI, screenshots it at both sizes and reads its console;
//! the accessibility check is shown to fail on a page known to be bad; and
//! `sign_in` signs in to the real dashboard, and is shown not to take a
//! refused sign-in for success.

use std::time::Instant;

use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use tollgate_e2e::browser::{Browser, DESKTOP, PHONE};
use tollgate_e2e::harness::{Stack, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_renders_in_chromium_with_screenshots_and_a_clean_console() {
    let stack = Stack::start_without_envoy().await;
    let started = Instant::now();
    let browser = Browser::start().await;
    eprintln!(
        "chromedriver and Chromium ready after {:?}",
        started.elapsed()
    );

    let shown = Instant::now();
    browser
        .goto(&format!(
            "http://127.0.0.1:{}/docs/",
            stack.control_plane_port
        ))
        .await;
    // Swagger UI renders the spec client-side: its operations appear only
    // once the page's script has fetched and laid out the OpenAPI document.
    browser.wait_for(".opblock").await;
    browser.wait_for_text("/v1/plans").await;
    eprintln!("Swagger UI rendered after {:?}", shown.elapsed());

    let paths = browser.screenshot("swagger-ui").await;
    for (path, viewport) in paths.iter().zip([DESKTOP, PHONE]) {
        let png = std::fs::read(path).expect("the screenshot was written");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        // The IHDR chunk's width and height, big-endian, right after the
        // signature and the chunk's length and type.
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
        assert_eq!(
            (size(16), size(20)),
            (viewport.width, viewport.height),
            "{}",
            path.display()
        );
    }
    browser.check_console().await;

    // Swagger UI is third-party: its violations are reported, not failed on.
    let axe = Instant::now();
    let violations = browser.accessibility_violations().await;
    eprintln!(
        "axe-core on Swagger UI took {:?}; serious or critical: {}",
        axe.elapsed(),
        violations.len()
    );
    for violation in &violations {
        eprintln!("  - {violation}");
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accessibility_check_fails_on_an_unlabelled_input() {
    let browser = Browser::start().await;
    browser
        .goto("data:text/html,<!doctype html><html lang=en><title>bad</title><main><input id=nameless></main>")
        .await;
    let report = browser
        .accessibility_report()
        .await
        .expect_err("axe-core flags an input with no label");
    assert!(report.contains("label"), "{report}");
    assert!(report.contains("#nameless"), "{report}");
    assert!(report.contains("[critical]"), "{report}");

    // The same page made good passes, so the failure above was the label.
    browser
        .goto("data:text/html,<!doctype html><html lang=en><title>good</title><main><label for=named>Name</label><input id=named></main>")
        .await;
    browser.check_accessibility().await;
    browser.fill_by_label("Name", "it's \"quoted\"").await;
    browser.check_fits_phone().await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_phone_width_checks_see_planted_failures() {
    let browser = Browser::start().await;
    browser
        .goto(
            "data:text/html,<!doctype html><title>noisy</title><body style=margin:0>\
               <div id=wide style=width:600px>wide</div>\
               <script>console.error('planted failure')</script>",
        )
        .await;
    let overflow = browser.phone_overflow().await;
    assert_eq!(overflow, ["div#wide ends at 600px"]);
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("planted failure")),
        "{errors:?}"
    );
    // Reading the log empties it: the next check sees only what came after.
    browser.check_console().await;
    browser.close().await;
}

/// `sign_in` against the real dashboard: the admin token gives a session
/// and the overview, with the admin's navigation. The pages' own flows are
/// their tests'; this one shows the helpers fit the real sign-in page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_reaches_the_real_dashboard_as_admin() {
    let stack = Stack::start_without_envoy().await;
    let base = format!("http://127.0.0.1:{}", stack.control_plane_port);
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/dashboard/login")).await;
    browser.wait_for("#token").await;
    browser.screenshot("login").await;
    browser.check_accessibility().await;

    browser.sign_in(&base, ADMIN_TOKEN).await;
    assert_eq!(browser.url().await, format!("{base}/dashboard"));
    let nav = browser.text("nav").await;
    assert!(nav.contains("Plans") && nav.contains("Tenants"), "{nav}");
    browser.screenshot("overview-admin").await;
    browser.check_accessibility().await;
    // Reported, not failed on: the pages' console is their own tests'
    // `check_console` to hold (a page without an icon logs the browser's
    // `/favicon.ico` 404 as an error).
    for error in browser.console_errors().await {
        eprintln!("console error on the dashboard: {error}");
    }
    for overflow in browser.phone_overflow().await {
        eprintln!("wider than a phone on the dashboard: {overflow}");
    }
    browser.close().await;
}

/// The sign-in page's agreed shape (issue 19): `/dashboard/login` with a form
/// holding `<input name="token" id="token">` and a submit button, answered by
/// a page with a `<nav>`. A stand-in server until the real page exists; a
/// wrong token shows the form again, which `sign_in` must not take for
/// success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_fills_the_token_and_waits_for_the_signed_in_page() {
    const LOGIN: &str = "<!doctype html><html lang=en><title>Sign in</title><main>\
        <form method=post action=/dashboard/login><label for=token>Token</label>\
        <input name=token id=token type=password><button>Sign in</button></form></main>";
    const SIGNED_IN: &str = "<!doctype html><html lang=en><title>Overview</title>\
        <nav aria-label=Dashboard><a href=/dashboard>Overview</a></nav><main><h1>Overview</h1></main>";
    let app = axum::Router::new()
        .route(
            "/dashboard/login",
            get(|| async { Html(LOGIN) }).post(|body: String| async move {
                if body == "token=right-token" {
                    Redirect::to("/dashboard").into_response()
                } else {
                    Html(LOGIN).into_response()
                }
            }),
        )
        .route("/dashboard", get(|| async { Html(SIGNED_IN) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = Browser::start().await;
    browser.sign_in(&base, "right-token").await;
    assert_eq!(browser.url().await, format!("{base}/dashboard"));
    assert_eq!(browser.text("h1").await, "Overview");
    browser.check_accessibility().await;

    let refused = tokio::spawn(async move {
        browser.sign_in(&base, "wrong-token").await;
    })
    .await
    .expect_err("sign_in fails when the sign-in page comes back");
    let message = refused
        .into_panic()
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(
        message.contains("a signed-in page with a <nav>") && message.contains("/dashboard/login"),
        "{message}"
    );
    server.abort();
}
