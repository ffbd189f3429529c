//! Limits shared by replicas.

use super::*;

#[tokio::test]
async fn two_replicas_share_one_login_budget() {
    let lab = Lab::start(&[("LOGIN_RATE_LIMIT", "10")]).await;
    let victim = lab.customer("target").await;
    let _ = victim;
    let second = lab.platform.replica("user").await;
    let first = lab.platform.ports["user"];
    let login = |port: u16, password: &str| {
        let url = format!("http://127.0.0.1:{port}/api/auth/login");
        lab.platform.client.post(url).json(&json!({"email": "target@example.com", "password": password})).send()
    };
    // The customer's own login above spent one attempt: nine more fail, the next is refused.
    for attempt in 0..9 {
        let port = if attempt % 2 == 0 { first } else { second.port };
        let (status, problem) = lab.answer(login(port, "wrong password!").await.unwrap()).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_credentials")),
            "attempt {attempt}"
        );
    }
    for port in [first, second.port] {
        let res = login(port, "wrong password!").await.unwrap();
        let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let (status, problem) = lab.answer(res).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
            "{problem}"
        );
        assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s))), "Retry-After");
    }
    // The right password is refused too until the minute is over: the budget is the email's.
    let res = login(second.port, PASSWORD).await.unwrap();
    let (status, _) = lab.answer(res).await;
    assert_eq!(status, 429);
    lab.assert_nothing_leaked();
}
