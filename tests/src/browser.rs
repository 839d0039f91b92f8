//! Real headless Chromium for the dashboard's end-to-end tests, driven over
//! WebDriver with `fantoccini`: Debian's `chromium`, and the `chromedriver`
//! built from the same source package so the two always match (both
//! installed by `cargo xtask test`). Each [`Browser`] is its own chromedriver
//! on a free loopback port and its own Chromium on a fresh profile, stopped
//! (by pid) when it drops.
//!
//! Paths come from the environment `cargo xtask test` sets:
//! `TOLLGATE_CHROMEDRIVER`, `TOLLGATE_CHROMIUM`, and `TOLLGATE_AXE` (axe-core's
//! `axe.min.js`, `npm ci`'d into `tests/browser/node_modules` from the
//! committed lock file).
//!
//! Like the rest of the harness, the helpers panic with a message saying what
//! they were doing, on which page: a panic is the test's failure, and a
//! `Result` at every step of a flow would only be `expect`ed. The checks that
//! a test may want to inspect rather than fail on have a non-panicking form
//! ([`Browser::accessibility_violations`], [`Browser::console_errors`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tollgate_launch::Process;

use crate::harness::{env_path, free_port, spawn, until_ready};

/// How long a wait for an element or text may take: pages here are served
/// from loopback, so anything slower is a failure, not a slow machine.
pub const WAIT: Duration = Duration::from_secs(5);
/// The viewports every screenshot is taken at (CSS pixels).
pub const DESKTOP: Viewport = Viewport {
    name: "desktop",
    width: 1280,
    height: 800,
};
pub const PHONE: Viewport = Viewport {
    name: "phone",
    width: 390,
    height: 844,
};

/// Chromium's flags. `--no-sandbox`: the tests run as root, where Chromium
/// refuses to start sandboxed. The `--disable-*` networking ones: on a machine
/// with no network but loopback, Chromium's own background fetches would
/// flood the log with refused connections.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

/// A page size to take a screenshot at.
#[derive(Debug, Clone, Copy)]
pub struct Viewport {
    pub name: &'static str,
    pub width: u32,
    pub height: u32,
}

/// One rule axe-core found broken on the page.
#[derive(Debug, Clone)]
pub struct Violation {
    /// axe's rule id, e.g. `label`.
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: String,
    pub help: String,
    pub help_url: String,
    /// The CSS selectors of the offending elements.
    pub targets: Vec<String>,
}

/// How many of a violation's elements a report names: a rule broken by a
/// shared template is broken on every row, and the first few locate it.
const TARGETS_SHOWN: usize = 5;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.targets.get(..TARGETS_SHOWN).unwrap_or(&self.targets);
        write!(
            f,
            "[{}] {}: {} ({})\n      on: {}",
            self.impact,
            self.id,
            self.help,
            self.help_url,
            shown.join(" | ")
        )?;
        match self.targets.len() - shown.len() {
            0 => Ok(()),
            more => write!(f, " and {more} more"),
        }
    }
}

/// A WebDriver command fantoccini has no method for, POSTed to
/// `/session/{id}/{path}`: chromedriver's browser log, and permissions.
#[derive(Debug)]
struct SessionPost {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// Headless Chromium under its own chromedriver.
pub struct Browser {
    client: Client,
    /// The chromedriver; Chromium is its child.
    driver: Option<Process>,
    /// Chromium's profile (`profile/`) and chromedriver's log.
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it is ready, and opens
    /// a session on headless Chromium at the [`DESKTOP`] size.
    pub async fn start() -> Self {
        let chromedriver = env_path("TOLLGATE_CHROMEDRIVER");
        let chromium = env_path("TOLLGATE_CHROMIUM");
        let dir = tempfile::tempdir().expect("a temp dir");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("the profile directory");
        let port = free_port();
        let mut command = Command::new(chromedriver);
        command.arg(format!("--port={port}"));
        let driver = spawn("chromedriver", command, dir.path().join("chromedriver.log"));
        let mut driver = until_ready(driver, port, "/status").await;

        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!(
            "--window-size={},{}",
            DESKTOP.width, DESKTOP.height
        ));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            // Every console message, so `console_errors` can read them back.
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("json! of an object literal is an object")
        };
        let connected =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => panic!(
                "chromedriver could not start Chromium: {e}\nchromedriver's last output:\n{}",
                driver.last_output()
            ),
        };
        let browser = Self {
            client,
            driver: Some(driver),
            dir,
        };
        browser.resize(DESKTOP).await;
        browser
    }

    /// fantoccini's client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the session, which quits Chromium, then stops chromedriver. Drop
    /// does the same by force; this lets Chromium exit cleanly.
    pub async fn close(mut self) {
        let client = self.client.clone();
        if let Err(e) = client.close().await {
            eprintln!("closing the browser session: {e}");
        }
        if let Some(driver) = self.driver.take() {
            driver.stop();
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(String::from)
            .unwrap_or_else(|e| panic!("the current URL: {e}"))
    }

    /// Runs `script` (a function body: `arguments[0]`… are `args`) in the page.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running a script in the page: {e}"))
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it.
    pub async fn find(&self, css: &str) -> Element {
        self.wait_for_locator(Locator::Css(css), &format!("an element matching `{css}`"))
            .await
    }

    /// The form control labelled `label` (its `<label>`'s text, whitespace
    /// trimmed), waiting up to [`WAIT`] for it: how a person finds a field,
    /// and a failure when a field has no label.
    pub async fn find_by_label(&self, label: &str) -> Element {
        let xpath = format!(
            "//label[normalize-space(.)={0}]/descendant::*[self::input or self::select or self::textarea] \
             | //*[(self::input or self::select or self::textarea) and @id=//label[normalize-space(.)={0}]/@for]",
            xpath_literal(label)
        );
        self.wait_for_locator(
            Locator::XPath(&xpath),
            &format!("a form control labelled {label:?}"),
        )
        .await
    }

    /// Waits up to [`WAIT`] for an element matching `css`; [`Browser::find`].
    pub async fn wait_for(&self, css: &str) -> Element {
        self.find(css).await
    }

    /// Waits up to [`WAIT`] until the page's visible text contains `text`.
    pub async fn wait_for_text(&self, text: &str) {
        let script = "return !!document.body && document.body.innerText.includes(arguments[0]);";
        let client = &self.client;
        self.wait_until(&format!("the text {text:?}"), || async move {
            client
                .execute(script, vec![json!(text)])
                .await
                .map(|found| found == Value::Bool(true))
        })
        .await;
    }

    /// Waits up to [`WAIT`] until nothing matches `css` (a dialog closed, a
    /// row deleted).
    pub async fn wait_until_gone(&self, css: &str) {
        let client = &self.client;
        self.wait_until(&format!("no element matching `{css}`"), || async move {
            client
                .find_all(Locator::Css(css))
                .await
                .map(|found| found.is_empty())
        })
        .await;
    }

    /// Clears the field matching `css` and types `value` into it.
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        fill(&field, value, css).await;
    }

    /// [`Browser::fill`] on the field labelled `label`.
    pub async fn fill_by_label(&self, label: &str, value: &str) {
        let field = self.find_by_label(label).await;
        fill(&field, value, label).await;
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    /// Clicks the button (or submit input) whose text is `text`.
    pub async fn click_button(&self, text: &str) {
        let literal = xpath_literal(text);
        let xpath = format!(
            "//button[normalize-space(.)={literal}] | //input[(@type='submit' or @type='button') and @value={literal}]"
        );
        let button = self
            .wait_for_locator(Locator::XPath(&xpath), &format!("a button {text:?}"))
            .await;
        button
            .click()
            .await
            .unwrap_or_else(|e| panic!("click the button {text:?}: {e}"));
    }

    /// Submits the form matching `form_css` by clicking its submit button, as
    /// a person would: the browser validates the fields and sends the
    /// button's own name and value, which `form.submit()` would skip.
    pub async fn submit(&self, form_css: &str) {
        let button = self
            .find(&format!(
                "{form_css} button:not([type]), {form_css} button[type=submit], {form_css} input[type=submit]"
            ))
            .await;
        button
            .click()
            .await
            .unwrap_or_else(|e| panic!("submit `{form_css}`: {e}"));
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        element
            .text()
            .await
            .unwrap_or_else(|e| panic!("the text of `{css}`: {e}"))
    }

    /// Signs in to the dashboard at `base_url` (e.g. `http://127.0.0.1:PORT`)
    /// with an admin or tenant token: fills `#token` on `/dashboard/login`,
    /// submits, and waits until a page with a `<nav>` is shown somewhere
    /// other than the sign-in page.
    pub async fn sign_in(&self, base_url: &str, token: &str) {
        let login = format!("{}/dashboard/login", base_url.trim_end_matches('/'));
        self.goto(&login).await;
        self.fill("#token", token).await;
        self.submit("form:has(#token)").await;
        let client = &self.client;
        self.wait_until("a signed-in page with a <nav>", || async move {
            let url = client.current_url().await?;
            if url.path().ends_with("/dashboard/login") {
                return Ok(false);
            }
            Ok(!client.find_all(Locator::Css("nav")).await?.is_empty())
        })
        .await;
    }

    /// Saves the page as `target/dashboard-screenshots/<name>-desktop.png`
    /// and `<name>-phone.png` ([`DESKTOP`] and [`PHONE`]), then goes back to
    /// the desktop size; returns the two paths. Artifacts for a person to
    /// look at, not compared with anything.
    pub async fn screenshot(&self, name: &str) -> Vec<PathBuf> {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a screenshot name is letters, digits, - and _: {name:?}"
        );
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut paths = Vec::new();
        for viewport in [DESKTOP, PHONE] {
            self.resize(viewport).await;
            let png = self
                .client
                .screenshot()
                .await
                .unwrap_or_else(|e| panic!("screenshot {name} at {}: {e}", viewport.name));
            let path = dir.join(format!("{name}-{}.png", viewport.name));
            std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            paths.push(path);
        }
        self.resize(DESKTOP).await;
        paths
    }

    /// Makes the page's viewport `viewport`: the window is set, then
    /// corrected by what the browser's own frame takes, which differs between
    /// Chromium builds.
    pub async fn resize(&self, viewport: Viewport) {
        let (width, height) = (viewport.width, viewport.height);
        let mut window = (width, height);
        for _ in 0..3 {
            self.client
                .set_window_size(window.0, window.1)
                .await
                .unwrap_or_else(|e| panic!("resize the window to {window:?}: {e}"));
            let inner = self
                .execute("return [window.innerWidth, window.innerHeight];", vec![])
                .await;
            let inner = (
                inner[0].as_u64().unwrap_or_default(),
                inner[1].as_u64().unwrap_or_default(),
            );
            if inner == (u64::from(width), u64::from(height)) {
                return;
            }
            let fix = |window: u32, wanted: u32, got: u64| {
                let got = u32::try_from(got).unwrap_or(wanted);
                (window + wanted).saturating_sub(got)
            };
            window = (
                fix(window.0, width, inner.0),
                fix(window.1, height, inner.1),
            );
        }
        panic!("could not make the viewport {width}×{height}");
    }

    /// At the [`PHONE`] width, the elements that stick out past the right
    /// edge and make the whole page scroll sideways (the outermost of each,
    /// at most five); empty when the page fits. Back at [`DESKTOP`] after.
    pub async fn phone_overflow(&self) -> Vec<String> {
        self.resize(PHONE).await;
        let script = "const width = document.documentElement.clientWidth;
            if (document.documentElement.scrollWidth <= width) return [];
            const past = el => el.getBoundingClientRect().right > width + 1;
            const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
                + [...el.classList].map(c => '.' + c).join('');
            return [...document.body.querySelectorAll('*')]
              .filter(el => past(el) && !(el.parentElement && el.parentElement !== document.body
                  && past(el.parentElement)))
              .slice(0, 5)
              .map(el => name(el) + ' ends at ' + Math.round(el.getBoundingClientRect().right) + 'px');";
        let found = self.execute(script, vec![]).await;
        self.resize(DESKTOP).await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// Fails if the page scrolls sideways at the [`PHONE`] width, naming what
    /// sticks out (a wide table belongs in a container that scrolls itself).
    pub async fn check_fits_phone(&self) {
        let overflow = self.phone_overflow().await;
        if !overflow.is_empty() {
            let url = self.url().await;
            panic!(
                "{url} is wider than {} px:\n  - {}",
                PHONE.width,
                overflow.join("\n  - ")
            );
        }
    }

    /// Runs axe-core's WCAG 2 A and AA rules on the page; returns the
    /// violations with impact `serious` or `critical`.
    pub async fn accessibility_violations(&self) -> Vec<Violation> {
        let loaded = self
            .execute("return typeof window.axe === 'object';", vec![])
            .await;
        if loaded != Value::Bool(true) {
            let axe = env_path("TOLLGATE_AXE");
            let source = std::fs::read_to_string(&axe)
                .unwrap_or_else(|e| panic!("read {}: {e}", axe.display()));
            self.execute(&source, vec![]).await;
        }
        // Only what the report needs crosses back: axe's full result is
        // megabytes on a large page.
        let script = "const done = arguments[arguments.length - 1];
            axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})
              .then(r => done({violations: r.violations.map(v => ({
                  id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                  targets: v.nodes.map(n => n.target.join(' '))}))}))
              .catch(e => done({error: String(e)}));";
        let result = self
            .client
            .execute_async(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("running axe-core: {e}"));
        if let Some(error) = result["error"].as_str() {
            panic!("axe-core failed: {error}");
        }
        let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
        result["violations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| Violation {
                id: text(v, "id"),
                impact: text(v, "impact"),
                help: text(v, "help"),
                help_url: text(v, "helpUrl"),
                targets: v["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
            })
            .collect()
    }

    /// Fails if axe-core finds any serious or critical violation, listing
    /// them with the elements they are on.
    pub async fn check_accessibility(&self) {
        if let Err(report) = self.accessibility_report().await {
            panic!("{report}");
        }
    }

    /// What [`Browser::check_accessibility`] fails with, as an error.
    pub async fn accessibility_report(&self) -> Result<(), String> {
        let violations = self.accessibility_violations().await;
        if violations.is_empty() {
            return Ok(());
        }
        let url = self.url().await;
        let list: Vec<String> = violations.iter().map(|v| format!("  - {v}")).collect();
        Err(format!(
            "{} serious or critical accessibility violation(s) on {url}:\n{}",
            violations.len(),
            list.join("\n")
        ))
    }

    /// The console errors (and uncaught exceptions, and failed loads, which
    /// Chromium logs as errors too) of every page since the last call:
    /// Chromium's browser log, read through chromedriver, which empties it.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .client
            .issue_cmd(SessionPost {
                path: "se/log",
                body: json!({"type": "browser"}),
            })
            .await
            .unwrap_or_else(|e| panic!("reading the browser log: {e}"));
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Lets pages of this session read the clipboard (`navigator.clipboard.readText`),
    /// through the W3C Permissions extension of WebDriver, so a test can check
    /// what a copy button put there. Writing needs no grant: a click is enough.
    pub async fn grant_clipboard_read(&self) {
        self.client
            .issue_cmd(SessionPost {
                path: "permissions",
                body: json!({"descriptor": {"name": "clipboard-read"}, "state": "granted"}),
            })
            .await
            .unwrap_or_else(|e| panic!("granting clipboard-read: {e}"));
    }

    /// Fails if any page logged a console error since the last check.
    pub async fn check_console(&self) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "console errors:\n  - {}",
            errors.join("\n  - ")
        );
    }

    async fn wait_for_locator(&self, locator: Locator<'_>, what: &str) -> Element {
        match self.client.wait().at_most(WAIT).for_element(locator).await {
            Ok(element) => element,
            Err(e) => panic!("{}", self.waited_in_vain(what, &e.to_string()).await),
        }
    }

    /// Polls `ready` every 50 ms until it says `true`; panics after [`WAIT`]
    /// saying what was awaited, on which page, and what the page showed.
    async fn wait_until<F, Fut>(&self, what: &str, mut ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, CmdError>>,
    {
        let started = Instant::now();
        let mut last_error = String::new();
        while started.elapsed() < WAIT {
            match ready().await {
                Ok(true) => return,
                Ok(false) => {}
                // A navigation in flight makes scripts fail for a moment.
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{}", self.waited_in_vain(what, &last_error).await);
    }

    /// The message for a wait that ran out: what, where, and the page's text.
    async fn waited_in_vain(&self, what: &str, error: &str) -> String {
        let url = self
            .client
            .current_url()
            .await
            .map(String::from)
            .unwrap_or_else(|e| format!("(no URL: {e})"));
        let shown = self
            .client
            .execute(
                "return document.body ? document.body.innerText.slice(0, 600) : '';",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let error = if error.is_empty() {
            String::new()
        } else {
            format!(" ({error})")
        };
        format!("waited {WAIT:?} for {what} on {url} in vain{error}; the page shows:\n{shown}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            if std::thread::panicking() {
                eprintln!("--- chromedriver.log ---\n{}", driver.last_output());
            }
            driver.stop();
        }
        // A chromedriver stopped without ending its session may leave its
        // Chromium running; ours are the ones on our profile directory.
        kill_processes_using(&self.dir.path().join("profile"));
    }
}

async fn fill(field: &Element, value: &str, what: &str) {
    field
        .clear()
        .await
        .unwrap_or_else(|e| panic!("clear {what}: {e}"));
    field
        .send_keys(value)
        .await
        .unwrap_or_else(|e| panic!("type into {what}: {e}"));
}

/// `text` as an XPath 1.0 string literal, which has no escapes: quoted with
/// whichever quote it lacks, or pieced together with `concat`.
fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        format!("'{text}'")
    } else if !text.contains('"') {
        format!("\"{text}\"")
    } else {
        let parts: Vec<String> = text.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

/// `target/dashboard-screenshots` of the workspace (or of `CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}

/// SIGKILLs, by pid, every process whose command line names `profile`.
fn kill_processes_using(profile: &Path) {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
