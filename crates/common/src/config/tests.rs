use super::*;

fn config(pairs: &[(&str, &str)]) -> Result<CommonConfig, ConfigError> {
    CommonConfig::from_env(&Env::from_pairs(pairs.iter().copied()), 8080)
}

#[test]
fn development_has_working_defaults() {
    let c = config(&[]).unwrap();
    assert_eq!(c.port, 8080);
    assert_eq!(c.database_url.expose_secret(), DEFAULT_DATABASE_URL);
    assert_eq!(c.access_token_ttl, Duration::from_secs(900));
    assert!(c.redis_url.is_none());
    assert!(!c.trust_forwarded_for);
    assert!(c.migrate_on_start);
    assert!(c.shutdown_delay.is_zero());
    assert_eq!(c.kafka_batch_records, 1);
    assert!(c.tracing);
}

#[test]
fn tracing_can_be_turned_off() {
    assert!(!config(&[("OTEL_SDK_DISABLED", "true")]).unwrap().tracing);
    assert!(!config(&[("OTEL_SDK_DISABLED", "TRUE")]).unwrap().tracing);
    assert!(config(&[("OTEL_SDK_DISABLED", "false")]).unwrap().tracing);
    assert_eq!(config(&[("OTEL_SDK_DISABLED", "sometimes")]).unwrap_err().name, "OTEL_SDK_DISABLED");
}

#[test]
fn cache_bounds_take_durations_and_sizes() {
    let c = config(&[]).unwrap();
    assert_eq!((c.cache_stale_max, c.l1_cache_bytes), (Duration::from_secs(1), 64 << 20));
    let c = config(&[("CACHE_STALE_MAX", "250ms"), ("L1_CACHE_BYTES", "512KiB")]).unwrap();
    assert_eq!((c.cache_stale_max, c.l1_cache_bytes), (Duration::from_millis(250), 512 << 10));
    assert_eq!(config(&[("L1_CACHE_BYTES", "0")]).unwrap().l1_cache_bytes, 0);
    assert_eq!(config(&[("L1_CACHE_BYTES", "100 MB")]).unwrap().l1_cache_bytes, 100_000_000);
    for bad in ["lots", "64XB", "MiB", "-1", "99999999999999999999GiB"] {
        assert_eq!(config(&[("L1_CACHE_BYTES", bad)]).unwrap_err().name, "L1_CACHE_BYTES", "{bad}");
    }
    assert_eq!(config(&[("CACHE_STALE_MAX", "0s")]).unwrap_err().name, "CACHE_STALE_MAX");
}

#[test]
fn samplers_are_the_specifications_names() {
    use crate::telemetry::{ParentRoot, TraceSampler};
    assert_eq!(config(&[]).unwrap().trace_sampler, TraceSampler::DEFAULT);
    let sampler = |pairs: &[(&str, &str)]| config(pairs).map(|c| c.trace_sampler);
    assert_eq!(sampler(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap(), TraceSampler::AlwaysOff);
    assert_eq!(
        sampler(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]).unwrap(),
        TraceSampler::ParentBased(ParentRoot::Ratio(0.25))
    );
    assert_eq!(sampler(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).unwrap(), TraceSampler::Ratio(1.0));
    assert_eq!(sampler(&[("OTEL_TRACES_SAMPLER", "sometimes")]).unwrap_err().name, "OTEL_TRACES_SAMPLER");
    let out_of_range = [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "1.5")];
    assert_eq!(sampler(&out_of_range).unwrap_err().name, "OTEL_TRACES_SAMPLER_ARG");
}

#[test]
fn kafka_batches_are_configurable_within_librdkafkas_bounds() {
    assert_eq!(config(&[("KAFKA_BATCH_NUM_MESSAGES", "10000")]).unwrap().kafka_batch_records, 10_000);
    for bad in ["0", "1000001", "-1", "many"] {
        let err = config(&[("KAFKA_BATCH_NUM_MESSAGES", bad)]).unwrap_err();
        assert_eq!(err.name, "KAFKA_BATCH_NUM_MESSAGES", "{bad}");
    }
}

#[test]
fn migrations_and_shutdown_are_configurable() {
    let c = config(&[("MIGRATE_ON_START", "false"), ("SHUTDOWN_DELAY", "10s")]).unwrap();
    assert!(!c.migrate_on_start);
    assert_eq!(c.shutdown_delay, Duration::from_secs(10));
    assert!(config(&[("SHUTDOWN_DELAY", "0s")]).unwrap().shutdown_delay.is_zero());
    assert_eq!(config(&[("MIGRATE_ON_START", "maybe")]).unwrap_err().name, "MIGRATE_ON_START");
    assert_eq!(config(&[("SHUTDOWN_DELAY", "later")]).unwrap_err().name, "SHUTDOWN_DELAY");
}

#[test]
fn malformed_values_name_their_variable() {
    let malformed = [
        ("PORT", "eighty"),
        ("ACCESS_TOKEN_TTL", "soon"),
        ("ACCESS_TOKEN_TTL", "0s"),
        ("APP_ENV", "staging"),
        ("REDIS_URL", "localhost"),
        ("TRUST_FORWARDED_FOR", "maybe"),
    ];
    for (name, value) in malformed {
        assert_eq!(config(&[(name, value)]).unwrap_err().name, name, "{name}={value}");
    }
    let err = config(&[("DATABASE_URL", "mysql://root:hunter2@db")]).unwrap_err();
    assert_eq!(err.name, "DATABASE_URL");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn the_request_deadline_is_configurable() {
    assert_eq!(config(&[]).unwrap().request_timeout, Duration::from_secs(30));
    assert_eq!(config(&[("REQUEST_TIMEOUT", "5s")]).unwrap().request_timeout, Duration::from_secs(5));
    assert_eq!(config(&[("REQUEST_TIMEOUT", "0s")]).unwrap_err().name, "REQUEST_TIMEOUT");
}

#[test]
fn inbox_retention_is_configurable() {
    assert_eq!(config(&[]).unwrap().inbox_retention, Duration::from_secs(14 * 86_400));
    assert_eq!(config(&[("INBOX_RETENTION", "30d")]).unwrap().inbox_retention, Duration::from_secs(30 * 86_400));
    assert_eq!(config(&[("INBOX_RETENTION", "forever")]).unwrap_err().name, "INBOX_RETENTION");
}

#[test]
fn every_binary_takes_dlq_replay_of_a_topic() {
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(Command::parse(&args(&[]), false), Ok(Command::Serve));
    assert_eq!(Command::parse(&args(&["migrate"]), false), Ok(Command::Migrate));
    assert_eq!(
        Command::parse(&args(&["dlq", "replay", "order.events"]), false),
        Ok(Command::DlqReplay("order.events".into()))
    );
    assert_eq!(Command::parse(&args(&["seed", "--products", "5"]), true), Ok(Command::Seed(5)));
    assert_eq!(Command::parse(&args(&["seed", "--products", "5"]), false), Err(false));
    assert_eq!(Command::parse(&args(&["dlq", "replay"]), false), Err(false));
    assert_eq!(Command::parse(&args(&["dlq", "replay", "--all"]), false), Err(false));
    assert_eq!(Command::parse(&args(&["--help"]), false), Err(true));
}

#[test]
fn cors_origins_are_a_list_of_origins() {
    assert!(config(&[]).unwrap().cors_allowed_origins.is_empty());
    let listed = config(&[("CORS_ALLOWED_ORIGINS", " https://shop.example, http://localhost:8000 ,")]).unwrap();
    assert_eq!(listed.cors_allowed_origins, ["https://shop.example", "http://localhost:8000"]);
    for bad in ["shop.example", "https://shop.example/", "https://shop.example/app", "ftp://x", "https://", "*"] {
        let err = config(&[("CORS_ALLOWED_ORIGINS", bad)]).unwrap_err();
        assert_eq!(err.name, "CORS_ALLOWED_ORIGINS", "{bad}");
    }
}

#[test]
fn production_refuses_the_development_secret() {
    assert_eq!(config(&[("APP_ENV", "production")]).unwrap_err().name, "JWT_SECRET");
    let dev = config(&[("APP_ENV", "production"), ("JWT_SECRET", DEV_JWT_SECRET)]);
    assert_eq!(dev.unwrap_err().name, "JWT_SECRET");
    let short = config(&[("APP_ENV", "production"), ("JWT_SECRET", "short")]);
    assert_eq!(short.unwrap_err().name, "JWT_SECRET");
    let secret = "x".repeat(40);
    let no_database = config(&[("APP_ENV", "production"), ("JWT_SECRET", secret.as_str())]);
    assert_eq!(no_database.unwrap_err().name, "DATABASE_URL");
    let good = config(&[
        ("APP_ENV", "production"),
        ("JWT_SECRET", secret.as_str()),
        ("DATABASE_URL", "postgres://svc:pw@db/shop"),
    ]);
    assert!(good.unwrap().app_env.is_production());
}
