//! One checkout is one trace: a client's `traceparent` on `POST /api/orders` and
//! `POST /api/payments` is continued by the order, product and payment services over HTTP
//! and through Kafka (the outbox, the broker's headers, the consumers), so every span any
//! of them records for it carries the client's trace id, each hop the child of the span
//! that made it.
//!
//! The three services run in this process, each on its own port, with a real broker, so
//! that the spans can be read from the in-memory exporter that stands in for OTLP; what
//! links the spans is only what crosses the wire (HTTP headers, outbox rows, Kafka headers).

use common::service::Spec as _;
use std::time::{Duration, Instant};

use common::auth::Role;
use common::config::Env;
use common::http::Shared;
use common::testing::{TestBroker, TestDb, TestServer, base_vars, with_overrides};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// The one span of `spans` that `matches`, failing with all of them listed.
fn one<'a>(spans: &'a [SpanData], what: &str, matches: impl Fn(&SpanData) -> bool) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| matches(s)).collect();
    assert!(!found.is_empty(), "no {what} span among {:#?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    found[0]
}

/// `child` was made by `parent` in another place: its parent is `parent`, known only
/// from what was carried across.
fn assert_remote_child(child: &SpanData, parent: &SpanData) {
    assert_eq!(
        child.parent_span_id,
        parent.span_context.span_id(),
        "{} is not the child of {}",
        child.name,
        parent.name
    );
    assert!(child.parent_span_is_remote, "{}'s parent reached it in-process, not over the wire", child.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkout_is_one_trace_across_order_product_and_payment() {
    let exporter = common::testing::spans();
    let broker = TestBroker::start().await;
    let database = TestDb::create().await;
    let vars = with_overrides(base_vars(&database), &[("KAFKA_BROKERS", &broker.brokers())]);
    let env = |more: &[(&str, String)]| {
        Env::from_pairs(vars.iter().cloned().chain(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone()))))
    };
    let product_config = product::Config::from_env(&env(&[])).unwrap();
    let shared = Shared::connect(&product_config.common).await.unwrap();
    let product = product_config.start(&shared).await.unwrap();
    let products = TestServer::spawn(common::http::app(vec![product], shared.clone())).await;
    let order_config =
        order::Config::from_env(&env(&[("PRODUCT_SERVICE_URL", format!("http://{}", products.addr))])).unwrap();
    let order = order_config.start(&shared).await.unwrap();
    let orders = TestServer::spawn(common::http::app(vec![order], shared.clone())).await;
    let payment_config =
        payment::Config::from_env(&env(&[("ORDER_SERVICE_URL", format!("http://{}", orders.addr))])).unwrap();
    let payment = payment_config.start(&shared).await.unwrap();
    let payments = TestServer::spawn(common::http::app(vec![payment], shared.clone())).await;

    let admin = shared.auth.issue(Uuid::now_v7(), Role::Admin, Uuid::now_v7()).unwrap().token;
    let customer = shared.auth.issue(Uuid::now_v7(), Role::Customer, Uuid::now_v7()).unwrap().token;
    let category: Value =
        products.post("/api/categories", &json!({"name": "Lamps"}), Some(&admin)).await.json().await.unwrap();
    let body = json!({"name": "Lamp", "price": "12.50", "stock": 3, "category_id": category["id"]});
    let lamp: Value = products.post("/api/products", &body, Some(&admin)).await.json().await.unwrap();
    let path = format!("/api/cart/items/{}", lamp["id"].as_str().unwrap());
    assert_eq!(orders.send(Method::PUT, &path, Some(&json!({"quantity": 2})), Some(&customer)).await.status(), 200);

    // The client's own trace: one trace id, a span id per call it makes.
    let trace_id = format!("{:032x}", Uuid::new_v4().as_u128());
    let (place_span, pay_span) = ("00f067aa0ba902b7", "00f067aa0ba902b8");
    let address = json!({"name": "A", "line1": "1 Main St", "city": "Oslo", "postal_code": "0150", "country": "NO"});
    let placed = orders
        .client
        .post(orders.url("/api/orders"))
        .bearer_auth(&customer)
        .header("traceparent", format!("00-{trace_id}-{place_span}-01"))
        .json(&json!({"shipping_address": address}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);
    let order: Value = placed.json().await.unwrap();
    let body = json!({"order_id": order["id"], "amount": order["total"], "currency": "USD",
                      "method": {"type": "card", "token": "tok_visa"}});
    let paid = payments
        .client
        .post(payments.url("/api/payments"))
        .bearer_auth(&customer)
        .header("idempotency-key", "trace-1")
        .header("traceparent", format!("00-{trace_id}-{pay_span}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 201);

    let is_consumer = |span: &SpanData, group: &str, topic: &str| {
        span.span_kind == SpanKind::Consumer
            && attribute(span, "messaging.consumer.group.name").as_deref() == Some(group)
            && attribute(span, "messaging.destination.name").as_deref() == Some(topic)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id().to_string() == trace_id)
            .collect();
        // order.created and order.paid, each consumed by both; payment.succeeded by order.
        let consumed = |group: &str, topic: &str| spans.iter().filter(|s| is_consumer(s, group, topic)).count();
        let done = consumed("product", "order.events") >= 2
            && consumed("payment", "order.events") >= 2
            && consumed("order", "payment.events") >= 1;
        if done || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let server = |route: &'static str| {
        move |s: &SpanData| s.span_kind == SpanKind::Server && attribute(s, "http.route").as_deref() == Some(route)
    };
    let client = |upstream: &'static str| {
        move |s: &SpanData| {
            s.span_kind == SpanKind::Client && attribute(s, "server.address").as_deref() == Some(upstream)
        }
    };
    let producer = |service: &'static str, topic: &'static str| {
        move |s: &SpanData| {
            s.span_kind == SpanKind::Producer
                && attribute(s, "service").as_deref() == Some(service)
                && attribute(s, "messaging.destination.name").as_deref() == Some(topic)
        }
    };

    // The checkout: the client → order (POST /api/orders) → product (the reservation).
    let place = one(&spans, "order service's POST /api/orders", server("/api/orders"));
    assert_eq!(place.parent_span_id.to_string(), place_span);
    assert!(place.parent_span_is_remote);
    let reserve_call = one(&spans, "order → product call", client("product"));
    let reserve = one(&spans, "product service's reservation", server("/internal/reservations"));
    assert_remote_child(reserve, reserve_call);

    // The payment: the client → payment → order (reading the order to pay).
    let pay = one(&spans, "payment service's POST /api/payments", server("/api/payments"));
    assert_eq!(pay.parent_span_id.to_string(), pay_span);
    let order_call = one(&spans, "payment → order call", client("order"));
    let order_read = one(&spans, "order service's internal read", server("/internal/orders/{id}"));
    assert_remote_child(order_read, order_call);

    // Through Kafka: payment.succeeded (payment → order), then order.paid (order → product
    // and payment), each consumer the child of the span that published the event.
    let published = one(&spans, "payment.events publish", producer("payment", "payment.events"));
    let applied = one(&spans, "order's payment.events consumer", |s| is_consumer(s, "order", "payment.events"));
    assert_remote_child(applied, published);
    let paid_events: Vec<&SpanData> = spans.iter().filter(|s| producer("order", "order.events")(s)).collect();
    for group in ["product", "payment"] {
        let consumed = spans.iter().filter(|s| is_consumer(s, group, "order.events")).collect::<Vec<_>>();
        assert!(!consumed.is_empty(), "the {group} service's consumption of order.events is not in the trace");
        for span in consumed {
            let parent = paid_events.iter().find(|p| p.span_context.span_id() == span.parent_span_id);
            assert!(parent.is_some() && span.parent_span_is_remote, "{group}'s consumer span has no publishing parent");
        }
    }
    // Database calls are in it too, in every service.
    for service in ["order", "product", "payment"] {
        let module = format!("{service}::");
        let queried = spans.iter().any(|s| {
            attribute(s, "db.system.name").as_deref() == Some("postgresql")
                && attribute(s, "code.module.name").is_some_and(|m| m.starts_with(&module))
        });
        assert!(queried, "no database span of the {service} service in the trace");
    }
}
