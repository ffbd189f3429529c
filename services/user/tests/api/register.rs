use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, expected, problem, validation};

/// The problem of a registration with `body`, which must be refused as invalid (422).
async fn refused(app: &TestApp, body: Value) -> Value {
    refused_answer(app.post("/api/auth/register", &body, None).await, &body).await
}

async fn refused_answer(res: reqwest::Response, body: &Value) -> Value {
    assert_eq!(res.status(), 422, "{body}");
    problem(res).await
}

#[tokio::test]
async fn register_returns_the_user_without_secrets() {
    let app = TestApp::spawn().await;
    let res = app.register("jane_doe", "Jane@Example.com").await;
    assert_eq!(res.status(), 201);
    let user: serde_json::Value = res.json().await.unwrap();
    let fields: Vec<&str> = user.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, ["created_at", "email", "id", "role", "username"]);
    assert_eq!(user["username"], "jane_doe");
    assert_eq!(user["email"], "Jane@Example.com");
    assert_eq!(user["role"], "customer");
    let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let created = chrono::DateTime::parse_from_rfc3339(user["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(created.offset().local_minus_utc(), 0);
}

#[tokio::test]
async fn duplicate_email_and_username_conflict_whatever_their_case() {
    let app = TestApp::spawn().await;
    assert_eq!(app.register("jane", "jane@example.com").await.status(), 201);

    let res = app.register("other", "JANE@example.COM").await;
    assert_eq!(res.status(), 409);
    assert_eq!(
        problem(res).await,
        expected(409, "email_taken", "Email taken", Some("an account with this email already exists"))
    );

    let res = app.register("JANE", "other@example.com").await;
    assert_eq!(res.status(), 409);
    assert_eq!(problem(res).await, expected(409, "username_taken", "Username taken", Some("this username is taken")));
}

#[tokio::test]
async fn concurrent_registrations_of_one_email_create_one_account() {
    let app = TestApp::spawn().await;
    let attempts = (0..10).map(|i| {
        let app = &app;
        async move { app.register(&format!("racer{i}"), "race@example.com").await.status().as_u16() }
    });
    let mut statuses = futures::future::join_all(attempts).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409, 409, 409]);
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let app = TestApp::spawn().await;
    assert_eq!(
        refused(&app, json!({"username": "a b", "email": "nope", "password": "short"})).await,
        validation(json!({
            "username": ["must be 3 to 50 characters of letters, digits, '_', '.' or '-'"],
            "email": ["must be a valid email address"],
            "password": ["must be 8 to 128 characters"],
        }))
    );
}

#[tokio::test]
async fn field_limits_are_exact() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"username": "ab", "email": "a@example.com", "password": PASSWORD}), Some("username")),
        (json!({"username": "a".repeat(51), "email": "a@example.com", "password": PASSWORD}), Some("username")),
        (json!({"username": "a".repeat(50), "email": "b@example.com", "password": PASSWORD}), None),
        (json!({"username": "abc", "email": "c@example.com", "password": "1234567"}), Some("password")),
        (json!({"username": "abd", "email": "d@example.com", "password": "12345678"}), None),
        (json!({"username": "abe", "email": "e@example.com", "password": "p".repeat(129)}), Some("password")),
        (json!({"username": "abf", "email": "f@example.com", "password": "p".repeat(128)}), None),
    ];
    for (body, bad_field) in cases {
        let res = app.post("/api/auth/register", &body, None).await;
        match bad_field {
            None => assert_eq!(res.status(), 201, "{body}"),
            Some(field) => {
                let errors = refused_answer(res, &body).await["errors"].clone();
                assert_eq!(errors.as_object().unwrap().keys().collect::<Vec<_>>(), [field], "{body}");
            }
        }
    }
}

#[tokio::test]
async fn mass_assignment_of_role_is_refused() {
    let app = TestApp::spawn().await;
    let mallory = json!({"username": "mallory", "email": "m@example.com", "password": PASSWORD, "role": "admin"});
    assert_eq!(refused(&app, mallory).await, validation(json!({"role": ["is not a known field"]})));
}

#[tokio::test]
async fn missing_and_mistyped_fields_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let no_password = json!({"username": "jane", "email": "j@example.com"});
    assert_eq!(refused(&app, no_password).await, validation(json!({"password": ["is required"]})));

    let numeric_name = json!({"username": 42, "email": "j@example.com", "password": PASSWORD});
    let mistyped = validation(json!({"username": ["invalid type: integer `42`, expected a string"]}));
    assert_eq!(refused(&app, numeric_name).await, mistyped);
}

#[tokio::test]
async fn malformed_bodies_are_4xx_problems() {
    let app = TestApp::spawn().await;
    let res = app.post_raw("/api/auth/register", Some("application/json"), "{\"username\": ").await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        problem(res).await,
        expected(400, "bad_request", "Bad request", Some("malformed JSON at line 1 column 13"))
    );

    let res = app.post_raw("/api/auth/register", Some("application/json"), "[\"not\", \"an object\"]").await;
    assert_eq!(res.status(), 400);
    assert_eq!(problem(res).await["code"], "bad_request");

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let res = app.post_raw("/api/auth/register", Some("application/json"), deep).await;
    assert_eq!(res.status(), 400);

    let res = app.post_raw("/api/auth/register", Some("text/plain"), "{}").await;
    assert_eq!(res.status(), 415);
    assert_eq!(
        problem(res).await,
        expected(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            Some("expected a body with Content-Type: application/json")
        )
    );

    let res = app.post_raw("/api/auth/register", None, "{}").await;
    assert_eq!(res.status(), 415);

    let res = app.post_raw("/api/auth/register", Some("application/json"), vec![0xff, 0xfe, 0x00, 0x7b]).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = TestApp::spawn().await;
    let big = json!({"username": "jane", "email": "j@example.com", "password": "x".repeat(70 * 1024)});
    let res = app.post("/api/auth/register", &big, None).await;
    assert_eq!(res.status(), 413);
    assert_eq!(
        problem(res).await,
        expected(413, "payload_too_large", "Payload too large", Some("request bodies are limited to 64 KiB"))
    );
}

#[tokio::test]
async fn nul_characters_in_strings_are_refused_without_touching_the_database() {
    let app = TestApp::spawn().await;
    let jane = app.customer("jane").await;
    let cases = [
        ("/api/auth/register", json!({"username": "a\u{0}b", "email": "x@example.com", "password": PASSWORD}), None),
        ("/api/auth/register", json!({"username": "abc", "email": "x\u{0}@example.com", "password": PASSWORD}), None),
        ("/api/auth/login", json!({"email": "jane\u{0}@example.com", "password": PASSWORD}), None),
        ("/api/auth/refresh", json!({"refresh_token": "\u{0}"}), None),
        ("/api/auth/logout", json!({"refresh_token": "\u{0}"}), Some(jane.access.as_str())),
    ];
    for (path, body, token) in cases {
        let res = app.post(path, &body, token).await;
        assert_eq!(res.status(), 400, "{path} {body}");
        assert_eq!(
            problem(res).await,
            expected(400, "bad_request", "Bad request", Some("strings must not contain the NUL character (\\u0000)"))
        );
    }
    let res =
        app.patch("/api/users/me", &json!({"email": "\u{0}", "current_password": PASSWORD}), Some(&jane.access)).await;
    assert_eq!(res.status(), 400);
}
