//! Forged, stale and foreign tokens.

use super::*;

/// An access token with `claims`, signed with `key` under `alg`.
fn token(alg: Algorithm, key: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

#[tokio::test]
async fn forged_and_stale_tokens_open_nothing() {
    let (lab, admin, product) = Lab::with_product().await;
    let customer = lab.customer("holder").await;
    let order = lab.order(&customer, &product).await;
    let t = now();
    // A real admin's identity, so only the token's flaw can be what refuses it.
    let claims = |changes: Value| {
        let mut claims = json!({"sub": admin.id, "role": "admin", "jti": Uuid::now_v7(), "sid": Uuid::now_v7(),
                                "iat": t - 5, "exp": t + 600, "iss": "shop", "aud": "shop-api"});
        claims.as_object_mut().unwrap().extend(changes.as_object().unwrap().clone());
        claims
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let secret = lab.secret.as_str();
    let forged = [
        ("alg none", none),
        ("a wrong key", token(Algorithm::HS256, "not-the-secret", &claims(json!({})))),
        ("HS512 with the right key", token(Algorithm::HS512, secret, &claims(json!({})))),
        ("expired", token(Algorithm::HS256, secret, &claims(json!({"iat": t - 1000, "exp": t - 10})))),
        ("not yet valid", token(Algorithm::HS256, secret, &claims(json!({"nbf": t + 600})))),
        ("a wrong issuer", token(Algorithm::HS256, secret, &claims(json!({"iss": "evil"})))),
        ("a wrong audience", token(Algorithm::HS256, secret, &claims(json!({"aud": "someone-else"})))),
        ("the internal audience", token(Algorithm::HS256, secret, &claims(json!({"aud": "shop-internal"})))),
        ("no expiry", {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            token(Algorithm::HS256, secret, &c)
        }),
        ("garbage", "not.a.token".to_owned()),
    ];
    // The well-signed control opens the same routes, so each refusal is the flaw's doing.
    let good = token(Algorithm::HS256, secret, &claims(json!({})));
    let order_id = order["id"].as_str().unwrap();
    let routes = [
        ("user", Method::GET, format!("/api/users/{}", customer.id)),
        ("product", Method::POST, format!("/api/products/{product}/stock")),
        ("order", Method::GET, format!("/api/orders/{order_id}")),
        ("payment", Method::GET, format!("/api/payments?order_id={order_id}")),
    ];
    for (service, method, path) in &routes {
        let body = (*method == Method::POST).then(|| json!({"delta": 1}));
        let (status, body_) = lab.call(service, method.clone(), path, Some(&good), body.as_ref()).await;
        assert_eq!(status, 200, "control on {service} {path}: {body_}");
        for (flaw, forged) in &forged {
            let (status, problem) = lab.call(service, method.clone(), path, Some(forged), body.as_ref()).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                "a token with {flaw} on {service} {path}: {problem}"
            );
        }
    }
    lab.assert_nothing_leaked();
}
