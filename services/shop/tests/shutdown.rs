//! SIGTERM under load, as Kubernetes stops a pod: each service in turn, while clients keep
//! sending it requests that change something.
//!
//! A request "had started" when the service began to handle it, which the databases show:
//! every request here leaves a trace (an account, a product, an idempotency record, a
//! payment) keyed by something unique to it. The promise checked is that no started
//! request is lost: every request that left a trace got its full answer, and no request
//! got a 5xx or any answer but the expected one. Requests that fail without a trace never
//! reached the service (a refused connection once the listener is closed, or a keep-alive
//! connection closed before the service read the request) and are what clients and
//! Envoy retry. The process must also say `/ready` 503 while it drains, keep answering
//! meanwhile, and exit with status 0 well within the 30 s grace period.
//!
//! A trace only shows what committed, so the payment phase also sends one slow request
//! just before SIGTERM (a card whose provider answers after `PROVIDER_TIMEOUT`, longer
//! than the drain): it is still running when the listener closes, and must get its whole
//! answer (the documented 504) after that.

#[allow(dead_code)] // each test uses its own part of the harness
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::Platform;
use uuid::Uuid;

/// Clients sending at once.
const WORKERS: usize = 12;
/// How long each service drains (answers /ready with 503) before closing its listener.
const DRAIN: Duration = Duration::from_secs(1);
/// Kubernetes' default terminationGracePeriodSeconds, as in deploy/k8s.
const GRACE: Duration = Duration::from_secs(30);
/// How long the slow card's provider call runs before the service answers 504; longer
/// than `DRAIN`.
const PROVIDER_TIMEOUT: &str = "3s";

/// What one request left behind, and what it got.
struct Outcome {
    /// What the request was (for messages) and the key of its trace.
    what: String,
    trace: Trace,
    answer: Answer,
    /// Sent after SIGTERM.
    after_signal: bool,
}

enum Answer {
    /// The status the request should get.
    Expected,
    /// Any other status: never acceptable.
    Unexpected(String),
    /// No (complete) answer: acceptable only if the service never began the request.
    Missing(String),
}

enum Trace {
    Account(String),
    Product(String),
    Checkout(String),
    Payment(String),
}

impl Trace {
    /// Whether the databases show that the service began to handle the request.
    async fn exists(&self, db: &PgPool) -> bool {
        let (sql, key) = match self {
            Self::Account(email) => ("SELECT EXISTS (SELECT 1 FROM users.users WHERE email = $1)", email),
            Self::Product(name) => ("SELECT EXISTS (SELECT 1 FROM catalog.products WHERE name = $1)", name),
            Self::Checkout(key) => ("SELECT EXISTS (SELECT 1 FROM ordering.idempotency_keys WHERE key = $1)", key),
            Self::Payment(key) => ("SELECT EXISTS (SELECT 1 FROM payments.idempotency_keys WHERE key = $1)", key),
        };
        sqlx::query_scalar(sql).bind(key).fetch_one(db).await.unwrap()
    }
}

/// One client: a customer with a cart, and an order it tries to pay (with a card that is
/// declined, so it can try again and again).
struct Customer {
    token: String,
    order: Option<(String, String)>,
}

struct Load {
    platform: Arc<Platform>,
    admin: String,
    category: String,
    products: Vec<String>,
    customers: Arc<Vec<Customer>>,
    signalled: AtomicBool,
}

impl Load {
    /// One request that changes something in `service`, with its trace and answer.
    async fn one(&self, service: &str, worker: usize) -> Option<Outcome> {
        let after_signal = self.signalled.load(Ordering::SeqCst);
        let unique = Uuid::new_v4().simple().to_string();
        let customer = &self.customers[worker];
        let (platform, token) = (&self.platform, Some(customer.token.as_str()));
        let (what, trace, answer, expected) = match service {
            "user" => {
                let email = format!("{unique}@example.com");
                let body =
                    json!({"username": format!("u{}", &unique[..16]), "email": email, "password": "correct horse"});
                let answer =
                    once(platform.request("user", Method::POST, "/api/auth/register", None, None, Some(&body))).await;
                ("register".to_owned(), Trace::Account(email), answer, StatusCode::CREATED)
            }
            "product" => {
                let name = format!("Shutdown {unique}");
                let body = json!({"name": name, "price": "9.99", "stock": 5, "category_id": self.category});
                let create =
                    platform.request("product", Method::POST, "/api/products", Some(&self.admin), None, Some(&body));
                let answer = once(create).await;
                ("create product".to_owned(), Trace::Product(name), answer, StatusCode::CREATED)
            }
            "order" => {
                // The same customer's cart each time: adding is idempotent, and a checkout
                // empties it. The checkout is what is checked.
                let product = &self.products[worker % self.products.len()];
                let path = format!("/api/cart/items/{product}");
                let one = json!({"quantity": 1});
                match once(platform.request("order", Method::PUT, &path, token, None, Some(&one))).await {
                    Ok((StatusCode::OK, _)) => {}
                    Ok((status, body)) => {
                        let answer = Answer::Unexpected(format!("{status} {body}"));
                        let what = "add to cart".to_owned();
                        return Some(Outcome { what, trace: Trace::Checkout(unique), answer, after_signal });
                    }
                    Err(_) => return None,
                }
                let body = json!({"shipping_address": {"name": "C", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"}});
                let checkout =
                    platform.request("order", Method::POST, "/api/orders", token, Some(&unique), Some(&body));
                let answer = once(checkout).await;
                ("checkout".to_owned(), Trace::Checkout(unique), answer, StatusCode::CREATED)
            }
            "payment" => {
                let (order, total) = customer.order.as_ref().expect("an order to pay");
                let card = json!({"type": "card", "token": "tok_chargeDeclined"});
                let body = json!({"order_id": order, "amount": total, "currency": "USD", "method": card});
                let pay = platform.request("payment", Method::POST, "/api/payments", token, Some(&unique), Some(&body));
                let answer = once(pay).await;
                (format!("pay order {order}"), Trace::Payment(unique), answer, StatusCode::CREATED)
            }
            other => unreachable!("no such service: {other}"),
        };
        let answer = match answer {
            Ok((status, _)) if status == expected => Answer::Expected,
            Ok((status, body)) => Answer::Unexpected(format!("{status} {body}")),
            Err(err) => Answer::Missing(format!("{err:?}")),
        };
        Some(Outcome { what, trace, answer, after_signal })
    }
}

/// One try, no retries: what the client got, or the transport error.
async fn once(request: reqwest::RequestBuilder) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = request.send().await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn every_service_answers_what_it_started_when_terminated() {
    let platform = Arc::new(
        Platform::start(&[
            ("SHUTDOWN_DELAY", &format!("{}s", DRAIN.as_secs())),
            ("ORDER_PAYMENT_TIMEOUT", "10m"),
            ("PROVIDER_TIMEOUT", PROVIDER_TIMEOUT),
        ])
        .await,
    );
    let admin = platform.admin_token().await;
    let (category, products) = platform.catalogue(&admin, 4, 1_000_000).await;
    let mut customers = Vec::new();
    // One customer per worker, and one more for the slow request.
    for n in 0..=WORKERS {
        let token = platform.customer(&format!("worker{n}")).await;
        let path = format!("/api/cart/items/{}", products[n % products.len()]);
        let (status, _) =
            platform.send("order", Method::PUT, &path, Some(&token), None, Some(&json!({"quantity": 1}))).await;
        assert_eq!(status, 200);
        let address = json!({"name": "C", "line1": "1 Main St", "city": "X", "postal_code": "1", "country": "US"});
        let body = json!({"shipping_address": address});
        let key = format!("to-pay-{n}");
        let (status, order) =
            platform.send("order", Method::POST, "/api/orders", Some(&token), Some(&key), Some(&body)).await;
        assert_eq!(status, 201, "{order}");
        let order = Some((order["id"].as_str().unwrap().to_owned(), order["total"].as_str().unwrap().to_owned()));
        customers.push(Customer { token, order });
    }
    let slow = customers.pop().expect("the slow request's customer");
    let customers = Arc::new(customers);
    let db = PgPool::connect(platform.database.url()).await.unwrap();

    for service in support::SERVICES {
        let load = Arc::new(Load {
            platform: platform.clone(),
            admin: admin.clone(),
            category: category.clone(),
            products: products.clone(),
            customers: customers.clone(),
            signalled: AtomicBool::new(false),
        });
        let running = Arc::new(AtomicBool::new(true));
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (load, running) = (load.clone(), running.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while running.load(Ordering::SeqCst) {
                        let outcome = load.one(service, worker).await;
                        // Once the service is gone, try again now and then, not in a spin.
                        if !matches!(outcome, Some(Outcome { answer: Answer::Expected, .. })) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        outcomes.extend(outcome);
                    }
                    outcomes
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_millis(1300)).await;
        let straddling = (service == "payment").then(|| {
            let (platform, token) = (platform.clone(), slow.token.clone());
            let (order, total) = slow.order.clone().expect("an order to pay");
            tokio::spawn(async move {
                let card = json!({"type": "card", "token": "tok_providerTimeout"});
                let body = json!({"order_id": order, "amount": total, "currency": "USD", "method": card});
                let response = platform
                    .request("payment", Method::POST, "/api/payments", Some(&token), Some("slow"), Some(&body))
                    .send()
                    .await
                    .expect("the slow request gets an answer");
                let status = response.status();
                let body: Value = response.json().await.expect("the whole answer");
                (status, body, Instant::now())
            })
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut processes = platform.processes.lock().await;
        let process = processes.iter_mut().find(|p| p.name == service).unwrap();
        let ready_url = process.url("/ready");
        load.signalled.store(true, Ordering::SeqCst);
        let signalled_at = Instant::now();
        process.terminate();
        // While it drains it tells load balancers to go away, and still serves.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ready = platform.client.get(&ready_url).send().await.expect("/ready answers while draining");
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "{service}: /ready while draining");
        let status = process.exited_within(GRACE).await;
        let took = signalled_at.elapsed();
        running.store(false, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for worker in workers {
            outcomes.extend(worker.await.unwrap());
        }
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        let status = status.unwrap_or_else(|| panic!("{service} did not exit within {GRACE:?} of SIGTERM"));
        assert!(status.success(), "{service} exited with {status} after SIGTERM:\n{log}");

        let mut lost = Vec::new();
        let (mut answered, mut answered_after_signal, mut not_started) = (0, 0, 0);
        for outcome in &outcomes {
            let started = outcome.trace.exists(&db).await;
            match &outcome.answer {
                Answer::Expected if started => {
                    answered += 1;
                    answered_after_signal += usize::from(outcome.after_signal);
                }
                Answer::Expected => lost.push(format!("{}: answered, but left no trace", outcome.what)),
                Answer::Unexpected(answer) => lost.push(format!("{}: answered {answer}", outcome.what)),
                Answer::Missing(_) if !started => not_started += 1,
                Answer::Missing(err) => {
                    lost.push(format!("{}: the service began it, but the client got no answer: {err}", outcome.what));
                }
            }
        }
        println!(
            "{service}: {answered} answered ({answered_after_signal} sent after SIGTERM), {not_started} never reached it; exited {status} {took:?} after SIGTERM"
        );
        assert!(
            lost.is_empty(),
            "{service} lost requests it had started:\n{}\n(log: {})",
            lost.join("\n"),
            process.log.display()
        );
        assert!(
            answered_after_signal > 0,
            "{service}: no request was in flight after SIGTERM, so the test proved nothing"
        );
        if let Some(straddling) = straddling {
            let (status, body, answered_at) = straddling.await.expect("the slow request's task");
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "the slow payment: {body}");
            assert_eq!(body["code"], "upstream_timeout", "{body}");
            assert!(
                answered_at.duration_since(signalled_at) > DRAIN,
                "the slow payment was answered before the listener closed, so it proved nothing"
            );
        }

        process.start();
        process.wait_ready(&platform.client).await;
    }
}
