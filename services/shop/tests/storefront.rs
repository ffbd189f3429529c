//! The storefront in a real browser: headless Chromium (Debian's `chromium`), driven over
//! WebDriver by `chromedriver`, buys a product from a page served on another origin than
//! the API, as a web client deployed on its own would. `./scripts/test` installs both.
//!
//! `STOREFRONT_SCREENSHOT=docs/storefront.png` keeps the screenshot the README shows.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::testing::{TestDb, free_port, redis_prefix};
use serde_json::{Value, json};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a step may take to become possible (a page to render, an answer to arrive).
const PATIENCE: Duration = Duration::from_secs(20);

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn program(variable: &str, default: &str) -> String {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install Debian's chromium and chromium-driver (./scripts/test does), or set {variable}"
    );
    path
}

/// Retries `step` until it succeeds or [`PATIENCE`] runs out.
async fn eventually<T, F, Fut>(what: &str, mut step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match step().await {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => panic!("{what}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One browser session over WebDriver's HTTP protocol.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: Running,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new(program("CHROMEDRIVER", "/usr/bin/chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Running(driver);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver to listen", || async {
            let status: Value = http
                .get(format!("{base}/status"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if status["value"]["ready"] == true { Ok(()) } else { Err(status.to_string()) }
        })
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": program("CHROMIUM", "/usr/bin/chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let id = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {created}"));
        Browser { http, session: format!("{base}/session/{id}"), _driver: driver }
    }

    /// One WebDriver command; its `value`, or WebDriver's error message.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value, String> {
        let request = self.http.request(method.clone(), format!("{}{path}", self.session));
        let request = if method == reqwest::Method::GET { request } else { request.json(&body) };
        let res = request.send().await.map_err(|e| e.to_string())?;
        let ok = res.status().is_success();
        let answer: Value = res.json().await.map_err(|e| e.to_string())?;
        if ok { Ok(answer["value"].clone()) } else { Err(answer["value"]["message"].to_string()) }
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({"url": url})).await.unwrap();
    }

    async fn find(&self, css: &str) -> Result<String, String> {
        let found =
            self.command(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await?;
        found[ELEMENT].as_str().map(str::to_owned).ok_or_else(|| found.to_string())
    }

    /// Clicks `css` once it is there and can be clicked.
    async fn click(&self, css: &str) {
        eventually(&format!("click {css}"), || async {
            let element = self.find(css).await?;
            self.command(reqwest::Method::POST, &format!("/element/{element}/click"), json!({})).await
        })
        .await;
    }

    /// Replaces what the field `css` holds with `text`.
    async fn fill(&self, css: &str, text: &str) {
        eventually(&format!("fill {css}"), || async {
            let element = self.find(css).await?;
            self.command(reqwest::Method::POST, &format!("/element/{element}/clear"), json!({})).await?;
            self.command(reqwest::Method::POST, &format!("/element/{element}/value"), json!({"text": text})).await
        })
        .await;
    }

    /// Fills the fields of the form `form` (by name) and submits it.
    async fn submit(&self, form: &str, fields: &[(&str, &str)]) {
        for (name, value) in fields {
            self.fill(&format!("{form} [name={name}]"), value).await;
        }
        self.click(&format!("{form} button")).await;
    }

    /// Waits until the text of `css` contains `want`.
    async fn wait_for_text(&self, css: &str, want: &str) {
        eventually(&format!("{css} to say {want:?}"), || async {
            let element = self.find(css).await?;
            let text = self.command(reqwest::Method::GET, &format!("/element/{element}/text"), json!({})).await?;
            let text = text.as_str().unwrap_or_default();
            if text.contains(want) { Ok(()) } else { Err(format!("it says {text:?}")) }
        })
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self.command(reqwest::Method::GET, "/screenshot", json!({})).await.unwrap();
        base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap()
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

async fn wait_until_serving(url: &str) {
    let http = reqwest::Client::new();
    eventually(&format!("{url} to answer"), || async {
        let res = http.get(url).send().await.map_err(|e| e.to_string())?;
        if res.status().is_success() { Ok(()) } else { Err(res.status().to_string()) }
    })
    .await;
}

#[tokio::test]
async fn a_customer_buys_through_the_storefront_from_another_origin() {
    let db = TestDb::reserve();
    let (api_port, site_port) = (free_port(), free_port());
    let (api, site) = (format!("http://127.0.0.1:{api_port}"), format!("http://127.0.0.1:{site_port}"));
    let _shop = Running(
        Command::new(env!("CARGO_BIN_EXE_shop"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db.url())
            .env("PORT", api_port.to_string())
            .env("BCRYPT_COST", "4")
            .env("REDIS_PREFIX", redis_prefix())
            .env("CORS_ALLOWED_ORIGINS", &site)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("shop starts"),
    );
    // The storefront's own folder, served by a web server that knows nothing of the API.
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../storefront");
    let _site = Running(
        Command::new("python3")
            .args(["-m", "http.server", &site_port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(&folder)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 serves the storefront"),
    );
    wait_until_serving(&format!("{api}/ready")).await;
    wait_until_serving(&format!("{site}/index.html")).await;
    let served = reqwest::get(format!("{api}/")).await.unwrap().text().await.unwrap();
    assert!(served.contains("app.js"), "shop serves the storefront at / too: {served}");

    let browser = Browser::start().await;
    browser.open(&format!("{site}/?api={api}#/login")).await;

    // The admin adds a category and a product from the admin page.
    browser.submit("#login", &[("email", "admin@shop.local"), ("password", "admin-password-dev-only")]).await;
    browser.click("#nav-admin").await;
    browser.submit("#add-category", &[("name", "Desks")]).await;
    browser.wait_for_text("#add-product [name=category_id]", "Desks").await;
    browser
        .submit(
            "#add-product",
            &[("name", "Standing desk"), ("description", "Oak top, electric"), ("price", "249.00"), ("stock", "5")],
        )
        .await;
    browser.wait_for_text("#notice", "Added Standing desk").await;
    browser.click("#nav-logout").await;

    // A new customer signs up, fills the cart and checks out.
    browser.click("#nav-signup").await;
    browser
        .submit("#signup", &[("username", "ada"), ("email", "ada@example.com"), ("password", "correct horse battery")])
        .await;
    browser.wait_for_text("#view", "Standing desk").await;
    browser.wait_for_text("#view", "249.00 USD").await;
    browser.click("article.card button").await;
    browser.wait_for_text("#notice", "is in your cart").await;
    browser.click("#nav-cart").await;
    browser.wait_for_text("#cart-total", "249.00").await;
    browser
        .submit(
            "#checkout",
            &[
                ("name", "Ada Lovelace"),
                ("line1", "12 St James's Square"),
                ("city", "London"),
                ("postal_code", "SW1Y 4JH"),
                ("country", "GB"),
            ],
        )
        .await;
    browser.wait_for_text("#order-status", "pending_payment").await;

    // Paying with the test card that succeeds: the status turns paid over the WebSocket,
    // with no reload.
    browser.wait_for_text("#live-state", "live updates on").await;
    browser.click("#pay button").await;
    browser.wait_for_text("#notice", "Payment accepted").await;
    browser.wait_for_text("#order-status", "paid").await;
    let screenshot = browser.screenshot().await;
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
    // A relative path is the repository's.
    let keep = std::env::var_os("STOREFRONT_SCREENSHOT").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("storefront.png"),
        |path| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path),
    );
    std::fs::write(&keep, &screenshot).unwrap();

    // The admin ships it.
    browser.click("#nav-logout").await;
    browser.click("#nav-login").await;
    browser.submit("#login", &[("email", "admin@shop.local"), ("password", "admin-password-dev-only")]).await;
    browser.click("#nav-admin").await;
    browser.click("#view table button").await;
    browser.wait_for_text("#view table", "shipped").await;
    browser.quit().await;
}
