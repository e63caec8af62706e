//! `/nodes/{node}/tasks/...` (pve-manager `PVE::API2::Tasks`): task list, status and log. A token
//! sees its own tasks; others' need `Sys.Audit` on the node.

use axum::extract::Path;

use super::{ApiOk, ApiParams, ApiResult, Authed, St, node_prop, validate, with_path};
use crate::auth::Auth;
use crate::error::Result;
use crate::schema::Prop;

/// `$check_task_user` or `Sys.Audit` on `/nodes/{node}`.
fn check_owner(auth: &Auth, owner: Option<String>, node: &str) -> Result<()> {
    if owner.as_deref() == Some(auth.tokenid.as_str()) {
        return Ok(());
    }
    auth.check(&format!("/nodes/{node}"), &["Sys.Audit"])
}

/// `GET /nodes/{node}/tasks`.
pub async fn list(
    state: St,
    auth: Authed,
    Path(node): Path<String>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("start", Prop::integer().optional().range(Some(0), None)),
            ("limit", Prop::integer().optional().range(Some(0), None)),
            ("vmid", super::vmid_prop().optional()),
            ("typefilter", Prop::string().optional()),
            ("userfilter", Prop::string().optional()),
            ("errors", Prop::boolean().optional()),
            (
                "source",
                Prop::string()
                    .optional()
                    .one_of(&["archive", "active", "all"]),
            ),
        ],
    )?;
    state.node.check_node(&node)?;
    let all_users = auth.has(&format!("/nodes/{node}"), "Sys.Audit");
    let start: usize = params
        .get("start")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = params
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let tasks: Vec<_> = state
        .node
        .tasks
        .list()
        .into_iter()
        .filter(|t| {
            let owner = match t["tokenid"].as_str() {
                Some(token) => format!("{}!{token}", t["user"].as_str().unwrap_or_default()),
                None => t["user"].as_str().unwrap_or_default().to_string(),
            };
            all_users || owner == auth.tokenid
        })
        .filter(|t| {
            params
                .get("vmid")
                .is_none_or(|v| t["id"].as_str() == Some(v))
        })
        .filter(|t| {
            params
                .get("typefilter")
                .is_none_or(|f| t["type"].as_str() == Some(f))
        })
        .filter(|t| {
            params
                .get("errors")
                .is_none_or(|e| e != "1" || t["status"].as_str() != Some("OK"))
        })
        .skip(start)
        .take(limit)
        .collect();
    Ok(ApiOk::new(tasks))
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
pub async fn status(
    state: St,
    auth: Authed,
    Path((node, upid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node), ("upid", &upid)])?;
    validate(
        &params,
        vec![("node", node_prop()), ("upid", Prop::string())],
    )?;
    state.node.check_node(&node)?;
    let status = state.node.tasks.status(&upid)?;
    check_owner(&auth, state.node.tasks.owner(&upid), &node)?;
    Ok(ApiOk::new(status))
}

/// `GET /nodes/{node}/tasks/{upid}/log`: lines `{n, t}` with `total`.
pub async fn log(
    state: St,
    auth: Authed,
    Path((node, upid)): Path<(String, String)>,
    ApiParams(params): ApiParams,
) -> ApiResult {
    let params = with_path(params, &[("node", &node), ("upid", &upid)])?;
    validate(
        &params,
        vec![
            ("node", node_prop()),
            ("upid", Prop::string()),
            ("start", Prop::integer().optional().range(Some(0), None)),
            ("limit", Prop::integer().optional().range(Some(0), None)),
            ("download", Prop::boolean().optional()),
        ],
    )?;
    state.node.check_node(&node)?;
    let start = params
        .get("start")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit = params
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let (lines, total) = state.node.tasks.log(&upid, start, limit)?;
    check_owner(&auth, state.node.tasks.owner(&upid), &node)?;
    let mut ok = ApiOk::new(lines);
    ok.total = Some(total);
    Ok(ok)
}
