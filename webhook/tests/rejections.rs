//! Rejection cases through the real router behind the real TLS listener: each must be denied with a
//! message naming the field (and, where there is a list, the allowed values).

mod common;

use common::cases::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn every_rejection_case_is_denied_naming_the_field() {
    let server = TestServer::start(world(), Options::default()).await;

    // The base migration is admitted for alice, so each case fails for its own reason only.
    let base = migration();
    let response = server
        .review(&review("CREATE", ALICE, Some(&base), None))
        .await;
    assert_eq!(response["allowed"], true, "{}", message(&response));

    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are distinct");

    let mut failures = vec![];
    for case in &cases {
        let mut request = match case.op {
            Op::Create => review("CREATE", case.user, Some(&base), None),
            Op::Update => review("UPDATE", case.user, Some(&base), Some(&base)),
        };
        (case.edit)(&mut request);
        let response = server.review(&request).await;
        let text = message(&response);
        let problem = if text.contains("hunter2") {
            Some("the message shows a password from the URL".to_owned())
        } else if response["allowed"] != false {
            Some("was allowed".to_owned())
        } else if !text.contains(&format!("{}:", case.field)) {
            Some(format!("message does not name {}", case.field))
        } else {
            case.mentions
                .iter()
                .find(|m| !text.contains(*m))
                .map(|m| format!("message does not mention {m:?}"))
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}; message: {text}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        cases.len() >= 40,
        "at least 40 rejection cases, have {}",
        cases.len()
    );
    println!(
        "{} rejection cases denied through HTTPS, each naming its field",
        cases.len()
    );
}

#[tokio::test]
async fn an_unreachable_api_server_means_deny() {
    let cluster = world();
    cluster.set_failure(Some("connection refused"));
    let server = TestServer::start(cluster, Options::default()).await;
    let response = server
        .review(&review("CREATE", ADMIN, Some(&migration()), None))
        .await;
    assert_eq!(response["allowed"], false);
    let text = message(&response);
    assert!(
        text.contains("spec.targetProviderRef: could not read Provider default/vsphere-prod"),
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
}

#[tokio::test]
async fn every_violation_is_reported_at_once() {
    let server = TestServer::start(world(), Options::default()).await;
    let mut request = review("CREATE", ALICE, Some(&migration()), None);
    s(&mut request, "/spec/targetName", json!("Bad_Name"));
    s(&mut request, "/spec/retryPolicy/maxAttempts", json!(42));
    rm(&mut request, "/spec/storage/bucket");
    s(
        &mut request,
        "/spec/storage/endpoint",
        json!("169.254.169.254"),
    );
    let text = message(&server.review(&request).await);
    for field in [
        "spec.targetName:",
        "spec.retryPolicy.maxAttempts:",
        "spec.storage.bucket:",
        "spec.storage.endpoint:",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
}
