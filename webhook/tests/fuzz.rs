//! No panic on any body: random JSON, random bytes, and mutations of a valid AdmissionReview thrown at
//! the router in-process (tower's `oneshot`), each answered with HTTP 200 and a well-formed
//! AdmissionReview response.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use common::*;
use http_body_util::BodyExt;
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Cases per run: at least 10,000 (override with WEBHOOK_FUZZ_CASES for longer runs).
fn cases() -> u32 {
    std::env::var("WEBHOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .max(10_000)
}

/// Arbitrary JSON, with the strings and keys an AdmissionReview uses over-represented.
fn json_value() -> impl Strategy<Value = Value> {
    let words = prop_oneof![
        Just("CREATE".to_owned()),
        Just("UPDATE".to_owned()),
        Just("VMMigration".to_owned()),
        Just("infra.virtrigaud.io".to_owned()),
        Just("v1beta1".to_owned()),
        Just("s3".to_owned()),
        Just("169.254.169.254".to_owned()),
        Just("http://[::1]:9000".to_owned()),
        Just("5m".to_owned()),
        ".*",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<u64>().prop_map(Value::from),
        words.prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("request".to_owned()),
        Just("object".to_owned()),
        Just("spec".to_owned()),
        Just("metadata".to_owned()),
        Just("kind".to_owned()),
        Just("operation".to_owned()),
        Just("uid".to_owned()),
        "[a-zA-Z]{1,12}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer in `value`.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let pointer = format!("{prefix}/{}", key.replace('~', "~0").replace('/', "~1"));
                out.push(pointer.clone());
                pointers(child, pointer, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let pointer = format!("{prefix}/{i}");
                out.push(pointer.clone());
                pointers(child, pointer, out);
            }
        }
        _ => {}
    }
}

/// A valid review with one to three of its nodes replaced by random JSON or removed.
fn mutated_review() -> impl Strategy<Value = Vec<u8>> {
    let base = review("CREATE", ALICE, Some(&migration()), None);
    let mut all = vec![];
    pointers(&base, String::new(), &mut all);
    let count = all.len();
    prop::collection::vec((0..count, json_value(), any::<bool>()), 1..4).prop_map(move |edits| {
        let mut review = base.clone();
        for (index, value, delete) in edits {
            let pointer = &all[index];
            if review.pointer(pointer).is_none() {
                continue; // Under a node an earlier edit replaced.
            }
            if delete {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                match review.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(key);
                    }
                    Some(Value::Array(items)) => {
                        items.remove(key.parse::<usize>().unwrap());
                    }
                    _ => {}
                }
            } else {
                *review.pointer_mut(pointer).unwrap() = value;
            }
        }
        serde_json::to_vec(&review).unwrap()
    })
}

/// A valid review cut short or with a byte flipped.
fn damaged_review() -> impl Strategy<Value = Vec<u8>> {
    let bytes = serde_json::to_vec(&review("CREATE", ALICE, Some(&migration()), None)).unwrap();
    let len = bytes.len();
    (0..len, any::<u8>(), any::<bool>()).prop_map(move |(at, byte, cut)| {
        let mut bytes = bytes.clone();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
        bytes
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated_review(),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => json_value().prop_map(|v| serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": v})).unwrap()),
        1 => damaged_review(),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

#[test]
fn no_body_makes_the_handler_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = webhook::router(state(world(), Options::default()));
    let tried = AtomicUsize::new(0);
    let denied = AtomicUsize::new(0);
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: the same bodies every run, so a failure reproduces.
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    runner
        .run(&body(), |body| {
            tried.fetch_add(1, Ordering::Relaxed);
            let sent_uid = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned));
            let (status, answer) = runtime.block_on(async {
                let request = http::Request::post("/validate")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                (status, bytes)
            });
            prop_assert_eq!(status, 200);
            let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&answer)
                .map_err(|e| TestCaseError::fail(format!("not an AdmissionReview: {e}")))?;
            let response = review
                .response
                .ok_or_else(|| TestCaseError::fail("no response"))?;
            if !response.allowed {
                denied.fetch_add(1, Ordering::Relaxed);
                prop_assert!(!response.result.message.is_empty(), "a denial says why");
            }
            if !response.uid.is_empty() {
                prop_assert_eq!(Some(response.uid), sent_uid, "the uid is echoed");
            }
            Ok(())
        })
        .unwrap();
    let tried = tried.load(Ordering::Relaxed);
    assert!(tried >= 10_000, "tried {tried}");
    println!(
        "{tried} random or mutated bodies answered without a panic ({} denied or invalid)",
        denied.load(Ordering::Relaxed)
    );
}
