//! TLS: a PostHog or webhook behind a private CA is trusted through `--ca-cert` (flag or
//! config file), a self-signed server is refused without it, a bad file is a usage error, and
//! a machine without a certificate store still works.

mod common;

use common::*;
use posthog_patterns_standin::WebhookConfig;
use posthog_patterns_standin::webhook::SECRET_PATH;

const POSTHOG_ONLY: Https = Https {
    posthog: true,
    webhook: false,
};
const BOTH: Https = Https {
    posthog: true,
    webhook: true,
};

#[test]
fn a_self_signed_posthog_is_refused_without_ca_cert_and_the_error_says_why() {
    let env = Env::https(POSTHOG_ONLY, events(200, 301), WebhookConfig::default());
    let run = env.run(&backfill_args(&["--max-retries", "0"]));
    run.assert_code(75);
    eprintln!("{}", run.stderr);
    assert!(
        run.stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--ca-cert FILE"), "{}", run.stderr);
    let key = env.posthog.config().api_key;
    assert!(
        !run.stderr.contains(&key),
        "the API key leaked: {}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(webhook_token()),
        "the webhook path leaked: {}",
        run.stderr
    );
    assert!(env.received().is_empty());
}

#[test]
fn a_self_signed_webhook_is_refused_without_its_certificate_and_its_url_stays_secret() {
    let env = Env::https(BOTH, events(200, 307), WebhookConfig::default());
    // PostHog's certificate only: reading works, posting must not.
    let posthog_only = env.path("posthog.pem");
    std::fs::write(
        &posthog_only,
        env.posthog.server.certificate.clone().unwrap(),
    )
    .unwrap();
    let run = env.run(&backfill_args(&[
        "--max-retries",
        "0",
        "--ca-cert",
        posthog_only.to_str().unwrap(),
    ]));
    run.assert_code(75);
    eprintln!("{}", run.stderr);
    assert!(
        run.stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--ca-cert FILE"), "{}", run.stderr);
    assert!(!run.stderr.contains(webhook_token()), "{}", run.stderr);
    assert!(env.received().is_empty());
}

/// The secret part of the webhook stand-in's URL.
fn webhook_token() -> &'static str {
    SECRET_PATH.rsplit('/').next().unwrap()
}

#[test]
fn ca_cert_trusts_a_private_ca_for_posthog_and_the_webhook() {
    let env = Env::https(BOTH, events(2_000, 302), WebhookConfig::default());
    let bundle = env.ca_file("ca-bundle.pem");
    let run = env.run(&backfill_args(&["--ca-cert", bundle.to_str().unwrap()]));
    run.assert_code(0);
    let delivered = env.assert_exactly_once(in_range);
    eprintln!("delivered {delivered} events over HTTPS both ways");
    assert!(delivered > 0);
}

#[test]
fn ca_cert_in_the_config_file_serves_export_and_send() {
    let env = Env::https(BOTH, events(1_000, 303), WebhookConfig::default());
    let bundle = env.ca_file("ca-bundle.pem");
    let config = env.path("pp.toml");
    std::fs::write(
        &config,
        format!(
            "ca_cert = [{:?}]\nprogress = \"never\"\n",
            bundle.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = env.path("events.ndjson");
    let out = out.to_str().unwrap();
    env.run(&[
        "export",
        "--config",
        config,
        "--start",
        "2024-03-01",
        "--end",
        "2024-03-08",
        "--output",
        out,
    ])
    .assert_code(0);
    env.run(&["send", "--config", config, out]).assert_code(0);
    env.assert_exactly_once(in_range);
}

#[test]
fn a_ca_cert_that_is_not_pem_is_a_usage_error_naming_the_file() {
    let env = Env::https(POSTHOG_ONLY, events(10, 304), WebhookConfig::default());
    let der = env.path("ca.der");
    std::fs::write(&der, b"\x30\x82\x01\x0a not PEM at all").unwrap();
    let run = env.run(&backfill_args(&["--ca-cert", der.to_str().unwrap()]));
    run.assert_code(2);
    eprintln!("{}", run.stderr);
    assert!(run.stderr.contains(der.to_str().unwrap()), "{}", run.stderr);
    assert!(
        run.stderr.contains("-----BEGIN CERTIFICATE-----"),
        "{}",
        run.stderr
    );

    let missing = env.path("missing.pem");
    let run = env.run(&backfill_args(&["--ca-cert", missing.to_str().unwrap()]));
    run.assert_code(2);
    assert!(
        run.stderr.contains(missing.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert!(env.posthog.log().is_empty(), "nothing is asked of PostHog");
}

#[test]
fn a_machine_without_a_certificate_store_still_trusts_ca_cert() {
    let env = Env::https(BOTH, events(300, 305), WebhookConfig::default());
    let bundle = env.ca_file("ca-bundle.pem");
    let empty_dir = env.path("no-certs");
    std::fs::create_dir(&empty_dir).unwrap();
    // rustls-native-certs reads only these when they are set: a store that is not there.
    let out = env
        .command(&backfill_args(&["--ca-cert", bundle.to_str().unwrap()]))
        .env("SSL_CERT_FILE", env.path("no-such-bundle.crt"))
        .env("SSL_CERT_DIR", &empty_dir)
        .output()
        .unwrap();
    let run = finish(out);
    run.assert_code(0);
    assert!(!run.stderr.contains("store"), "no warning: {}", run.stderr);
    env.assert_exactly_once(in_range);
}

#[test]
fn an_unusable_certificate_store_is_skipped_with_a_warning() {
    let env = Env::https(BOTH, events(300, 306), WebhookConfig::default());
    let bundle = env.ca_file("ca-bundle.pem");
    let junk = env.path("junk-store.crt");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = env
        .command(&backfill_args(&["--ca-cert", bundle.to_str().unwrap()]))
        .env("SSL_CERT_FILE", &junk)
        .output()
        .unwrap();
    let run = finish(out);
    run.assert_code(0);
    eprintln!("{}", run.stderr);
    assert!(
        run.stderr
            .contains("the system's certificate store is unusable"),
        "{}",
        run.stderr
    );
    env.assert_exactly_once(in_range);
}
