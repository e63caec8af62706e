//! The route table: every method the simulator serves, as the schema names it (path template and
//! HTTP method), with the parameters its handler reads. The router is built from it and the route
//! test checks it against the schema file, so neither can drift from the other.

use futures::future::BoxFuture;

use super::{ApiResult, Call, cluster, nodes, qemu, storage, tasks, upload};
use crate::schema::{self, Method, Verb};

/// A route handler.
pub type Handler = fn(Call) -> BoxFuture<'static, ApiResult>;

/// One served method.
pub struct Route {
    /// HTTP method.
    pub verb: Verb,
    /// Path template below `/api2/json`, as in the schema (`/nodes/{node}/qemu/{vmid}`).
    pub path: &'static str,
    /// The parameters the handler reads besides the path parameters.
    pub reads: &'static [&'static str],
    /// The handler.
    pub handler: Handler,
}

impl Route {
    /// The method's declaration in the schema (file or listed exception).
    pub fn method(&self) -> &'static Method {
        schema::api()
            .method(self.verb, self.path)
            .unwrap_or_else(|| panic!("{} {} is not in the schema", self.verb.as_str(), self.path))
    }

    /// The names of the path parameters (`node`, `vmid`).
    pub fn path_params(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect()
    }

    /// Whether the handler may read parameter `name`.
    pub fn reads_param(&self, name: &str) -> bool {
        self.reads.contains(&name) || self.path_params().contains(&name)
    }

    /// The path for axum: `{volume}`, a volume ID with `/` in it, takes the rest of the path.
    pub fn axum_path(&self) -> String {
        self.path.replace("{volume}", "{*volume}")
    }
}

macro_rules! route {
    ($verb:ident $path:literal, $handler:path, [$($read:literal),* $(,)?]) => {
        Route {
            verb: Verb::$verb,
            path: $path,
            reads: &[$($read),*],
            handler: |call| Box::pin($handler(call)),
        }
    };
}

/// Every route of the simulator.
pub static ROUTES: &[Route] = &[
    route!(Get "/version", cluster::version, []),
    route!(Get "/cluster/nextid", cluster::nextid, ["vmid"]),
    route!(Get "/cluster/resources", cluster::resources, ["type"]),
    route!(Get "/nodes", nodes::index, []),
    route!(Get "/nodes/{node}/status", nodes::status, []),
    route!(Get "/nodes/{node}/qemu", qemu::list, []),
    route!(Post "/nodes/{node}/qemu", qemu::create, ["vmid", "archive", "storage", "start"]),
    route!(Get "/nodes/{node}/qemu/{vmid}", qemu::vm_index, []),
    route!(Delete "/nodes/{node}/qemu/{vmid}", qemu::destroy,
        ["skiplock", "purge", "destroy-unreferenced-disks"]),
    route!(Get "/nodes/{node}/qemu/{vmid}/config", qemu::config_get, ["snapshot"]),
    route!(Post "/nodes/{node}/qemu/{vmid}/config", qemu::config_post,
        ["skiplock", "delete", "digest"]),
    route!(Put "/nodes/{node}/qemu/{vmid}/config", qemu::config_put,
        ["skiplock", "delete", "digest"]),
    route!(Get "/nodes/{node}/qemu/{vmid}/status", qemu::status_index, []),
    route!(Get "/nodes/{node}/qemu/{vmid}/status/current", qemu::status_current, []),
    route!(Post "/nodes/{node}/qemu/{vmid}/status/start", qemu::start, ["skiplock"]),
    route!(Post "/nodes/{node}/qemu/{vmid}/status/stop", qemu::stop, ["skiplock"]),
    route!(Post "/nodes/{node}/qemu/{vmid}/status/shutdown", qemu::shutdown, ["skiplock"]),
    route!(Get "/nodes/{node}/qemu/{vmid}/snapshot", qemu::snapshot_list, []),
    route!(Post "/nodes/{node}/qemu/{vmid}/snapshot", qemu::snapshot_create,
        ["snapname", "description"]),
    route!(Get "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}", qemu::snapshot_index, []),
    route!(Delete "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}", qemu::snapshot_delete,
        ["force"]),
    route!(Get "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config", qemu::snapshot_config, []),
    route!(Put "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
        qemu::snapshot_config_update, ["description"]),
    route!(Get "/nodes/{node}/storage", storage::index, ["storage", "content", "format"]),
    route!(Get "/nodes/{node}/storage/{storage}", storage::diridx, []),
    route!(Get "/nodes/{node}/storage/{storage}/status", storage::status, []),
    route!(Get "/nodes/{node}/storage/{storage}/content", storage::content, ["content", "vmid"]),
    route!(Get "/nodes/{node}/storage/{storage}/content/{volume}", storage::volume_info, []),
    route!(Delete "/nodes/{node}/storage/{storage}/content/{volume}", storage::volume_delete, []),
    route!(Post "/nodes/{node}/storage/{storage}/upload", upload::upload,
        ["content", "filename", "checksum", "checksum-algorithm"]),
    route!(Post "/nodes/{node}/storage/{storage}/download-url", upload::download_url,
        ["content", "filename", "url", "checksum", "checksum-algorithm", "verify-certificates",
         "compression"]),
    route!(Get "/nodes/{node}/tasks", tasks::list,
        ["start", "limit", "vmid", "typefilter", "userfilter", "errors"]),
    route!(Get "/nodes/{node}/tasks/{upid}", tasks::index, []),
    route!(Get "/nodes/{node}/tasks/{upid}/status", tasks::status, []),
    route!(Get "/nodes/{node}/tasks/{upid}/log", tasks::log, ["start", "limit"]),
    route!(Get "/storage", storage::config_index, ["type"]),
    route!(Get "/storage/{storage}", storage::config_read, []),
];
