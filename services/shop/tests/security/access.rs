//! Ownership and roles: what one customer, a stranger or a customer at an admin or internal
//! route can reach, and the fields no client may set.

use super::*;

#[tokio::test]
async fn one_customer_cannot_read_or_change_what_is_anothers() {
    let (lab, _, product) = Lab::with_product().await;
    let (alice, mallory) = (lab.customer("alice").await, lab.customer("mallory").await);

    let order = lab.order(&alice, &product).await;
    let order_id = order["id"].as_str().unwrap();
    let not_found = |what: &str, (status, body): (StatusCode, Value)| {
        assert_eq!(status, 404, "{what}: {body}");
        assert_eq!(body["code"], "not_found", "{what}: {body}");
    };
    let m = Some(mallory.access.as_str());
    // Orders: reading, paying and cancelling another's are "not found" (existence hidden).
    not_found("read order", lab.call("order", Method::GET, &format!("/api/orders/{order_id}"), m, None).await);
    not_found("pay order", lab.pay(&mallory, &order).await);
    let cancel = format!("/api/orders/{order_id}/cancel");
    not_found("cancel order", lab.call("order", Method::POST, &cancel, m, Some(&json!({}))).await);
    let (status, list) = lab.call("order", Method::GET, &format!("/api/orders?user_id={}", alice.id), m, None).await;
    assert!(
        status == 403 || (status == 200 && list["items"].as_array().unwrap().is_empty()),
        "another's orders by user_id: {status} {list}"
    );

    // Payments: another's payment is not found, and listing by their order shows nothing.
    let (status, paid) = lab.pay(&alice, &order).await;
    assert_eq!(status, 201, "alice pays: {paid}");
    let payment_id = paid["id"].as_str().unwrap();
    not_found("read payment", lab.call("payment", Method::GET, &format!("/api/payments/{payment_id}"), m, None).await);
    let (status, list) = lab.call("payment", Method::GET, &format!("/api/payments?order_id={order_id}"), m, None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"], json!([]), "another's payments by order id");
    let refund = format!("/api/payments/{payment_id}/refunds");
    let (status, body) = lab.call("payment", Method::POST, &refund, m, Some(&json!({}))).await;
    assert_eq!(status, 403, "refund another's payment: {body}");

    // Cart: there is no cart id; whatever mallory does changes mallory's cart only.
    let a = Some(alice.access.as_str());
    let item = format!("/api/cart/items/{product}");
    let (status, _) = lab.call("order", Method::PUT, &item, a, Some(&json!({"quantity": 2}))).await;
    assert_eq!(status, 200);
    lab.call("order", Method::DELETE, &item, m, None).await;
    lab.call("order", Method::DELETE, "/api/cart", m, None).await;
    let (_, cart) = lab.call("order", Method::GET, "/api/cart", a, None).await;
    assert_eq!(cart["items"][0]["quantity"], 2, "alice's cart after mallory cleared his: {cart}");
    let (_, cart) = lab.call("order", Method::GET, "/api/cart", m, None).await;
    assert_eq!(cart["items"], json!([]), "mallory sees his own empty cart: {cart}");

    // Profile: another's by id is admin-only; "me" is always the caller; another's
    // session cannot be ended with a token that is not yours.
    let (status, body) = lab.call("user", Method::GET, &format!("/api/users/{}", alice.id), m, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    let change = json!({"username": "alice_owned", "current_password": PASSWORD});
    let (status, me) = lab.call("user", Method::PATCH, "/api/users/me", m, Some(&change)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], mallory.id, "PATCH /me changed someone else");
    let logout = json!({"refresh_token": alice.refresh});
    let (status, _) = lab.call("user", Method::POST, "/api/auth/logout", m, Some(&logout)).await;
    assert!(status.is_client_error() || status == 204, "logout with another's refresh token: {status}");
    let (status, me) = lab.call("user", Method::GET, "/api/users/me", a, None).await;
    assert_eq!((status, me["username"].as_str()), (StatusCode::OK, Some("alice")), "alice is untouched: {me}");
    let (status, tokens) =
        lab.call("user", Method::POST, "/api/auth/refresh", None, Some(&json!({"refresh_token": alice.refresh}))).await;
    assert_eq!(status, 200, "alice's session survives mallory's logout: {tokens}");
    lab.keep_secret(tokens["access_token"].as_str().unwrap());
    lab.keep_secret(tokens["refresh_token"].as_str().unwrap());

    // And alice's order is still hers, paid (once the payment's event is applied), untouched.
    let order = lab.order_once(&alice, order_id, "paid").await;
    assert_eq!(order["user_id"], alice.id.as_str());
    lab.assert_nothing_leaked();
}

#[tokio::test]
async fn customers_and_strangers_cannot_call_admin_or_internal_routes() {
    let (lab, admin, product) = Lab::with_product().await;
    let customer = lab.customer("eve").await;
    let order = lab.order(&customer, &product).await;
    let (status, paid) = lab.pay(&customer, &order).await;
    assert_eq!(status, 201, "{paid}");
    let (order_id, payment_id) = (order["id"].as_str().unwrap(), paid["id"].as_str().unwrap());
    let category = json!({"name": "Hacked"});
    let new_product = json!({"name": "Free", "price": "0.01", "stock": 1, "category_id": Uuid::now_v7()});
    let admin_routes: Vec<(&str, Method, String, Option<Value>)> = vec![
        ("user", Method::GET, format!("/api/users/{}", admin.id), None),
        ("product", Method::POST, "/api/categories".into(), Some(category)),
        ("product", Method::POST, "/api/products".into(), Some(new_product)),
        ("product", Method::PATCH, format!("/api/products/{product}"), Some(json!({"price": "0.01"}))),
        ("product", Method::DELETE, format!("/api/products/{product}"), None),
        ("product", Method::POST, format!("/api/products/{product}/stock"), Some(json!({"delta": 1000}))),
        ("order", Method::POST, format!("/api/orders/{order_id}/ship"), Some(json!({}))),
        ("order", Method::POST, format!("/api/orders/{order_id}/deliver"), Some(json!({}))),
        ("payment", Method::POST, format!("/api/payments/{payment_id}/refunds"), Some(json!({}))),
    ];
    for (service, method, path, body) in &admin_routes {
        let (status, problem) = lab.call(service, method.clone(), path, Some(&customer.access), body.as_ref()).await;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{method} {path}");
        let (status, problem) = lab.call(service, method.clone(), path, None, body.as_ref()).await;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{path}");
    }
    // Internal routes open to service tokens only: not to a customer's, nor an admin's.
    let reserve = json!({"order_id": Uuid::now_v7(), "items": [{"product_id": product, "quantity": 1}]});
    for token in [&customer.access, &admin.access] {
        let (status, body) =
            lab.call("product", Method::POST, "/internal/reservations", Some(token), Some(&reserve)).await;
        assert!(matches!(status.as_u16(), 401 | 403), "reserve with a user token: {status} {body}");
        let (status, body) =
            lab.call("order", Method::GET, &format!("/internal/orders/{order_id}"), Some(token), None).await;
        assert!(matches!(status.as_u16(), 401 | 403), "internal order with a user token: {status} {body}");
    }
    // Nothing changed: the product, the order and the payment are as they were.
    let (_, now) = lab.call("product", Method::GET, &format!("/api/products/{product}"), None, None).await;
    assert_eq!((now["price"].as_str(), now["stock"].as_i64()), (Some("5.99"), Some(9)), "{now}");
    lab.order_once(&customer, order_id, "paid").await;
    let path = format!("/api/payments/{payment_id}");
    let (_, now) = lab.call("payment", Method::GET, &path, Some(&customer.access), None).await;
    assert_eq!(now["status"], "succeeded", "{now}");
    lab.assert_nothing_leaked();
}

#[tokio::test]
async fn fields_a_client_must_not_set_are_refused() {
    let (lab, _, product) = Lab::with_product().await;
    let victim = lab.customer("victim").await;
    let customer = lab.customer("sneaky").await;
    let c = Some(customer.access.as_str());
    let refused = |what: &str, (status, body): (StatusCode, Value)| {
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{what}: {body}"
        );
    };

    let register = json!({"username": "boss", "email": "boss@example.com", "password": PASSWORD, "role": "admin"});
    refused("register as admin", lab.call("user", Method::POST, "/api/auth/register", None, Some(&register)).await);
    for field in [json!({"role": "admin"}), json!({"id": victim.id}), json!({"created_at": "2020-01-01T00:00:00Z"})] {
        let mut body = json!({"current_password": PASSWORD});
        body.as_object_mut().unwrap().extend(field.as_object().unwrap().clone());
        refused("profile field", lab.call("user", Method::PATCH, "/api/users/me", c, Some(&body)).await);
    }
    let item = format!("/api/cart/items/{product}");
    refused(
        "cart price",
        lab.call("order", Method::PUT, &item, c, Some(&json!({"quantity": 1, "unit_price": "0.01"}))).await,
    );
    let line = json!({"product_id": product, "quantity": 1});
    let cheap_line = json!({"product_id": product, "quantity": 1, "unit_price": "0.01"});
    for extra in [
        json!({"user_id": victim.id}),
        json!({"status": "paid"}),
        json!({"total": "0.01"}),
        json!({"price": "0.01"}),
        json!({"items": [cheap_line]}),
    ] {
        let mut body = json!({"items": [line], "shipping_address": address()});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let path = "/api/orders";
        refused(
            "order field",
            lab.raw("order", path, Some("application/json"), body.to_string().into(), &customer.access).await,
        );
    }
    let order = lab.order(&customer, &product).await;
    for extra in [json!({"status": "succeeded"}), json!({"user_id": victim.id}), json!({"id": Uuid::now_v7()})] {
        let mut body = payment(&order, "tok_visa");
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        refused("payment field", lab.call("payment", Method::POST, "/api/payments", c, Some(&body)).await);
    }
    let mut cheap = payment(&order, "tok_visa");
    cheap["amount"] = json!("0.01");
    let (status, body) = lab.call("payment", Method::POST, "/api/payments", c, Some(&cheap)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("amount_mismatch")), "{body}");

    // Nothing took: still a customer, one order at the catalogue price, unpaid; the
    // victim has no orders.
    let (_, me) = lab.call("user", Method::GET, "/api/users/me", c, None).await;
    assert_eq!(me["role"], "customer");
    let (_, orders) = lab.call("order", Method::GET, "/api/orders", c, None).await;
    let orders = orders["items"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!((orders[0]["total"].as_str(), orders[0]["status"].as_str()), (Some("5.99"), Some("pending_payment")));
    let (_, theirs) = lab.call("order", Method::GET, "/api/orders", Some(&victim.access), None).await;
    assert_eq!(theirs["items"], json!([]));
    let (_, payments) = lab.call("payment", Method::GET, "/api/payments", c, None).await;
    assert_eq!(payments["items"], json!([]));
    lab.assert_nothing_leaked();
}
