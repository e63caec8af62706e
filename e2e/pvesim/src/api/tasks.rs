//! `/nodes/{node}/tasks/...` (pve-manager `PVE::API2::Tasks`): task list, status and log. A token
//! sees its own tasks; others' need `Sys.Audit` on the node.

use serde_json::{Value, json};

use super::{ApiOk, ApiResult, Args, Call};
use crate::auth::Auth;
use crate::error::Result;

/// `$check_task_user` or `Sys.Audit` on `/nodes/{node}`.
fn check_owner(auth: &Auth, owner: Option<String>, node: &str) -> Result<()> {
    if owner.as_deref() == Some(auth.tokenid.as_str()) {
        return Ok(());
    }
    auth.check(&format!("/nodes/{node}"), &["Sys.Audit"])
}

/// The task's owner as PVE prints it (`user!token` for a token's task).
fn owner(task: &Value) -> String {
    let user = task["user"].as_str().unwrap_or_default();
    match task["tokenid"].as_str() {
        Some(token) => format!("{user}!{token}"),
        None => user.to_string(),
    }
}

/// Whether a task passes the list filters (`vmid`, `typefilter`, `userfilter`, `errors`).
fn selected(args: &Args, task: &Value) -> bool {
    let field = |name: &str| task[name].as_str().unwrap_or_default().to_string();
    args.get("vmid").is_none_or(|v| field("id") == v)
        && args.get("typefilter").is_none_or(|f| field("type") == f)
        && args
            .get("userfilter")
            .is_none_or(|u| owner(task).to_lowercase().contains(&u.to_lowercase()))
        && (!args.flag("errors") || field("status") != "OK")
}

/// `GET /nodes/{node}/tasks`.
pub async fn list(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let node = args.str("node");
    let all_users = call.auth.has(&format!("/nodes/{node}"), "Sys.Audit");
    let tasks: Vec<_> = call
        .node()
        .tasks
        .list()
        .into_iter()
        .filter(|t| all_users || owner(t) == call.auth.tokenid)
        .filter(|t| selected(&args, t))
        .skip(args.num("start").unwrap_or(0))
        .take(args.num("limit").unwrap_or(50))
        .collect();
    Ok(ApiOk::new(tasks))
}

/// `GET /nodes/{node}/tasks/{upid}`: the directory index (after the same checks as the status).
pub async fn index(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let upid = args.str("upid");
    call.node().tasks.status(upid)?;
    check_owner(&call.auth, call.node().tasks.owner(upid), args.str("node"))?;
    Ok(ApiOk::new(json!([{ "name": "log" }, { "name": "status" }])))
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
pub async fn status(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let upid = args.str("upid");
    let status = call.node().tasks.status(upid)?;
    check_owner(&call.auth, call.node().tasks.owner(upid), args.str("node"))?;
    Ok(ApiOk::new(status))
}

/// `GET /nodes/{node}/tasks/{upid}/log`: lines `{n, t}` with `total`.
pub async fn log(mut call: Call) -> ApiResult {
    let args = call.node_args().await?;
    let upid = args.str("upid");
    let start = args.num("start").unwrap_or(0);
    let limit = args.num("limit").unwrap_or(50);
    let (lines, total) = call.node().tasks.log(upid, start, limit)?;
    check_owner(&call.auth, call.node().tasks.owner(upid), args.str("node"))?;
    Ok(ApiOk::paged(lines, total))
}
