//! Reading properties (PropertyCollector, ContainerView) and finding inventory objects by name or
//! by inventory path.

use super::Client;
use super::client::unexpected;
use super::soap::Fault;
use super::types::{Datacenter, MoRef, Network};
use super::xml::{Elem, Xml};
use crate::{Error, Result};

/// One object's properties as the PropertyCollector returned them.
#[derive(Clone, Debug)]
pub struct ObjectContent {
    pub obj: MoRef,
    /// `(property path, val element)`; unset properties are absent.
    pub props: Vec<(String, Elem)>,
}

impl ObjectContent {
    /// The value of property `path`.
    pub fn get(&self, path: &str) -> Option<&Elem> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// The text of property `path`.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.get(path).map(|v| v.text.trim())
    }

    /// Property `path` read as a moref.
    pub fn moref(&self, path: &str) -> Option<MoRef> {
        self.get(path)?.as_moref()
    }

    /// Property `path` (an `ArrayOfManagedObjectReference`) as a list.
    pub fn morefs(&self, path: &str) -> Vec<MoRef> {
        self.get(path)
            .map(|v| v.children.iter().filter_map(Elem::as_moref).collect())
            .unwrap_or_default()
    }
}

/// vSphere escapes `%`, `/` and `\` in entity names; this undoes it.
pub fn unescape_name(name: &str) -> String {
    name.replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%5c", "\\")
        .replace("%5C", "\\")
        .replace("%25", "%")
}

/// `<propSet><type>kind</type><pathSet>..</pathSet></propSet>`.
fn prop_spec(x: &mut Xml, kind: &str, paths: &[&str]) {
    x.open("propSet").text("type", kind);
    if paths.is_empty() {
        x.text("all", "false");
    }
    for p in paths {
        x.text("pathSet", p);
    }
    x.close("propSet");
}

impl Client {
    /// Properties `paths` of `obj`. A missing object is [`Error::NotFound`]; a property the
    /// server refused (missingSet) becomes the error of its fault.
    pub async fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
        let mut x = Xml::new();
        x.open("specSet");
        prop_spec(&mut x, &obj.kind, paths);
        x.open("objectSet").moref("obj", obj).close("objectSet");
        x.close("specSet").open("options").close("options");
        let pc = &self.content.property_collector;
        let reply = self.call("RetrievePropertiesEx", pc, x).await?;
        let context = format!("reading {} of {obj}", paths.join(", "));
        let (mut objects, _) = parse_objects(&self.system, &reply, &context)?;
        objects
            .pop()
            .ok_or_else(|| unexpected(&self.system, &context, "no object in the reply"))
    }

    /// Every object of `kind` (subtypes included) below `container`, with properties `paths`.
    pub async fn list(
        &self,
        container: &MoRef,
        kind: &str,
        paths: &[&str],
    ) -> Result<Vec<ObjectContent>> {
        let view = self.create_view(container, kind).await?;
        let listed = self.list_view(&view, kind, paths).await;
        // a view left behind only costs server memory until logout
        let destroyed = self.call("DestroyView", &view, Xml::new()).await;
        if let Err(e) = destroyed {
            tracing::debug!("DestroyView {view}: {e}");
        }
        listed
    }

    async fn create_view(&self, container: &MoRef, kind: &str) -> Result<MoRef> {
        let mut x = Xml::new();
        x.moref("container", container)
            .text("type", kind)
            .text("recursive", "true");
        let reply = self
            .call("CreateContainerView", &self.content.view_manager, x)
            .await?;
        reply
            .moref_at("returnval")
            .ok_or_else(|| unexpected(&self.system, "CreateContainerView", "no view returned"))
    }

    async fn list_view(
        &self,
        view: &MoRef,
        kind: &str,
        paths: &[&str],
    ) -> Result<Vec<ObjectContent>> {
        let mut x = Xml::new();
        x.open("specSet");
        prop_spec(&mut x, kind, paths);
        x.open("objectSet")
            .moref("obj", view)
            .text("skip", "true")
            .open_typed("selectSet", "TraversalSpec")
            .text("name", "view")
            .text("type", "ContainerView")
            .text("path", "view")
            .text("skip", "false")
            .close("selectSet")
            .close("objectSet")
            .close("specSet")
            .open("options")
            .text("maxObjects", self.page_size)
            .close("options");
        let pc = &self.content.property_collector;
        let context = format!("listing {kind}");
        let reply = self.call("RetrievePropertiesEx", pc, x).await?;
        let (mut all, mut token) = parse_objects(&self.system, &reply, &context)?;
        while let Some(t) = token {
            let mut x = Xml::new();
            x.text("token", &t);
            let reply = self.call("ContinueRetrievePropertiesEx", pc, x).await?;
            let (more, next) = parse_objects(&self.system, &reply, &context)?;
            all.extend(more);
            token = next;
        }
        Ok(all)
    }

    /// `SearchIndex.FindByInventoryPath` (`DC0/vm/folder/name`): `None` when nothing is there.
    pub async fn find_by_inventory_path(&self, path: &str) -> Result<Option<MoRef>> {
        let mut x = Xml::new();
        x.text("inventoryPath", path);
        let reply = self
            .call("FindByInventoryPath", &self.content.search_index, x)
            .await?;
        Ok(reply.moref_at("returnval"))
    }

    /// Every object of `kind` named `name` below `within` (the root folder when `None`).
    pub async fn find_all_named(
        &self,
        kind: &str,
        name: &str,
        within: Option<&MoRef>,
    ) -> Result<Vec<MoRef>> {
        let container = within.unwrap_or(&self.content.root_folder);
        Ok(self
            .list(container, kind, &["name"])
            .await?
            .into_iter()
            .filter(|o| {
                o.text("name")
                    .is_some_and(|n| n == name || unescape_name(n) == name)
            })
            .map(|o| o.obj)
            .collect())
    }

    /// The one object of `kind` named `name` below `within` (the root folder when `None`).
    /// `what` names the kind in errors (`VM`, `datastore`...). Several matches are refused.
    pub async fn find_named(
        &self,
        what: &str,
        kind: &str,
        name: &str,
        within: Option<&MoRef>,
    ) -> Result<MoRef> {
        let container = within.unwrap_or(&self.content.root_folder);
        let found = self.find_all_named(kind, name, within).await?;
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::NotFound {
                what: format!("{what} {name:?}"),
                detail: format!("no {kind} of that name in {container} on {}", self.system),
            }),
            many => Err(Error::Invalid(format!(
                "{}: {} objects of type {kind} are named {name:?} ({}): name one by inventory path",
                self.system,
                many.len(),
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The VM named `name` anywhere in the inventory.
    pub async fn find_vm(&self, name: &str) -> Result<MoRef> {
        self.find_named("VM", "VirtualMachine", name, None).await
    }

    /// Every VM named `name` anywhere in the inventory.
    pub async fn find_vms(&self, name: &str) -> Result<Vec<MoRef>> {
        self.find_all_named("VirtualMachine", name, None).await
    }

    /// The VM at inventory path `path` (`DC0/vm/DC0_H0_VM0`).
    pub async fn find_vm_by_path(&self, path: &str) -> Result<MoRef> {
        self.find_path_of_kind("VM", "VirtualMachine", path).await
    }

    async fn find_path_of_kind(&self, what: &str, kind: &str, path: &str) -> Result<MoRef> {
        match self.find_by_inventory_path(path).await? {
            Some(r) if r.kind == kind => Ok(r),
            Some(r) => Err(Error::Invalid(format!(
                "{}: inventory path {path:?} is {r}, not a {what}",
                self.system
            ))),
            None => Err(Error::NotFound {
                what: format!("{what} at inventory path {path:?}"),
                detail: format!("nothing at that path on {}", self.system),
            }),
        }
    }

    /// The datacenter named `name`, or the first one when `None`.
    pub async fn datacenter(&self, name: Option<&str>) -> Result<Datacenter> {
        let moref = match name {
            Some(n) => self.find_named("datacenter", "Datacenter", n, None).await?,
            None => self.first_datacenter().await?,
        };
        self.datacenter_info(&moref).await
    }

    async fn first_datacenter(&self) -> Result<MoRef> {
        let mut all = self
            .list(&self.content.root_folder, "Datacenter", &["name"])
            .await?;
        if all.is_empty() {
            return Err(Error::NotFound {
                what: "datacenter".into(),
                detail: format!("{} has none", self.system),
            });
        }
        Ok(all.swap_remove(0).obj)
    }

    /// Name, inventory path and folders of datacenter `dc`.
    pub async fn datacenter_info(&self, dc: &MoRef) -> Result<Datacenter> {
        let paths = [
            "name",
            "parent",
            "vmFolder",
            "hostFolder",
            "datastoreFolder",
            "networkFolder",
        ];
        let p = self.properties(dc, &paths).await?;
        let folder = |name: &str| {
            p.moref(name)
                .ok_or_else(|| unexpected(&self.system, &format!("reading {dc}"), name))
        };
        let name = unescape_name(p.text("name").unwrap_or_default());
        let path = self.inventory_path(p.moref("parent"), &name).await?;
        Ok(Datacenter {
            moref: dc.clone(),
            name,
            path,
            vm_folder: folder("vmFolder")?,
            host_folder: folder("hostFolder")?,
            datastore_folder: folder("datastoreFolder")?,
            network_folder: folder("networkFolder")?,
        })
    }

    /// `folder/.../name`: the names of `parent` and its ancestors below the root folder.
    async fn inventory_path(&self, mut parent: Option<MoRef>, name: &str) -> Result<String> {
        let mut parts = vec![name.to_string()];
        while let Some(p) = parent.filter(|p| *p != self.content.root_folder) {
            let props = self.properties(&p, &["name", "parent"]).await?;
            parts.push(props.text("name").unwrap_or_default().to_string());
            parent = props.moref("parent");
        }
        parts.reverse();
        Ok(parts.join("/"))
    }

    /// The datastore named `name` in `dc`.
    pub async fn find_datastore(&self, dc: &Datacenter, name: &str) -> Result<MoRef> {
        self.find_named("datastore", "Datastore", name, Some(&dc.datastore_folder))
            .await
    }

    /// The network (standard or distributed port group, opaque network) named `name` in `dc`.
    pub async fn find_network(&self, dc: &Datacenter, name: &str) -> Result<Network> {
        let moref = self
            .find_named("network", "Network", name, Some(&dc.network_folder))
            .await?;
        let portgroup = match moref.kind.as_str() {
            "DistributedVirtualPortgroup" => Some(self.portgroup_key(&moref).await?),
            _ => None,
        };
        Ok(Network {
            moref,
            name: name.to_string(),
            portgroup,
        })
    }

    /// `(key, switch uuid)` of a distributed port group.
    async fn portgroup_key(&self, pg: &MoRef) -> Result<(String, String)> {
        let p = self
            .properties(pg, &["key", "config.distributedVirtualSwitch"])
            .await?;
        let key = p.text("key").unwrap_or(&pg.value).to_string();
        let switch = p
            .moref("config.distributedVirtualSwitch")
            .ok_or_else(|| unexpected(&self.system, &format!("reading {pg}"), "no switch"))?;
        let s = self.properties(&switch, &["uuid"]).await?;
        Ok((key, s.text("uuid").unwrap_or_default().to_string()))
    }

    /// The VM folder at `path` below `dc`'s VM folder (`""`: the VM folder itself). A path that
    /// already starts with the datacenter's (`DC0/vm/...`) is taken as a full inventory path.
    pub async fn find_vm_folder(&self, dc: &Datacenter, path: &str) -> Result<MoRef> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Ok(dc.vm_folder.clone());
        }
        let full = if path.starts_with(&format!("{}/", dc.path)) {
            path.to_string()
        } else {
            format!("{}/vm/{path}", dc.path)
        };
        self.find_path_of_kind("folder", "Folder", &full).await
    }

    /// The resource pool named `name` below `within` (a datacenter's host folder, a cluster...).
    pub async fn find_resource_pool(&self, within: &MoRef, name: &str) -> Result<MoRef> {
        self.find_named("resource pool", "ResourcePool", name, Some(within))
            .await
    }

    /// The cluster named `name` in `dc`.
    pub async fn find_cluster(&self, dc: &Datacenter, name: &str) -> Result<MoRef> {
        self.find_named(
            "cluster",
            "ClusterComputeResource",
            name,
            Some(&dc.host_folder),
        )
        .await
    }

    /// The host named `name` in `dc`.
    pub async fn find_host(&self, dc: &Datacenter, name: &str) -> Result<MoRef> {
        self.find_named("host", "HostSystem", name, Some(&dc.host_folder))
            .await
    }

    /// The first compute resource (cluster or standalone host) of `dc`.
    pub async fn default_compute_resource(&self, dc: &Datacenter) -> Result<MoRef> {
        let mut all = self
            .list(&dc.host_folder, "ComputeResource", &["name"])
            .await?;
        if all.is_empty() {
            return Err(Error::NotFound {
                what: "compute resource".into(),
                detail: format!(
                    "datacenter {} on {} has no cluster or host",
                    dc.name, self.system
                ),
            });
        }
        Ok(all.swap_remove(0).obj)
    }

    /// The root resource pool of a cluster or compute resource, or of a host's compute resource.
    pub async fn root_resource_pool(&self, compute: &MoRef) -> Result<MoRef> {
        let compute = match compute.kind.as_str() {
            "HostSystem" => self
                .properties(compute, &["parent"])
                .await?
                .moref("parent")
                .ok_or_else(|| {
                    unexpected(&self.system, &format!("reading {compute}"), "no parent")
                })?,
            _ => compute.clone(),
        };
        self.properties(&compute, &["resourcePool"])
            .await?
            .moref("resourcePool")
            .ok_or_else(|| {
                Error::Invalid(format!("{}: {compute} has no resource pool", self.system))
            })
    }

    /// The hosts of a cluster or compute resource.
    pub async fn hosts(&self, compute: &MoRef) -> Result<Vec<MoRef>> {
        Ok(self.properties(compute, &["host"]).await?.morefs("host"))
    }

    /// The name of any managed entity.
    pub async fn name_of(&self, obj: &MoRef) -> Result<String> {
        let p = self.properties(obj, &["name"]).await?;
        Ok(unescape_name(p.text("name").unwrap_or_default()))
    }
}

/// Reads a `RetrieveResult` (objects and continuation token). A property the server refused
/// (`missingSet` with a fault) is the error of that fault.
fn parse_objects(
    system: &str,
    reply: &Elem,
    context: &str,
) -> Result<(Vec<ObjectContent>, Option<String>)> {
    let Some(rv) = reply.child("returnval") else {
        return Ok((Vec::new(), None));
    };
    let mut out = Vec::new();
    for o in rv.all("objects") {
        let obj = o
            .moref_at("obj")
            .ok_or_else(|| unexpected(system, context, "object without obj"))?;
        for missing in o.all("missingSet") {
            if let Some(f) = missing.child("fault").map(Fault::from_localized) {
                let path = missing.string_at("path");
                return Err(f.into_error(system, &format!("{context}: {path} of {obj}")));
            }
        }
        let props = o
            .all("propSet")
            .filter_map(|p| Some((p.text_at("name")?.to_string(), p.child("val")?.clone())))
            .collect();
        out.push(ObjectContent { obj, props });
    }
    let token = rv.text_at("token").map(str::to_string);
    Ok((out, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "vSphere https://vc/sdk";

    #[test]
    fn objects_props_and_token() {
        let reply = crate::provider::vsphere::xml::parse(
            r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><token>t-1</token>
<objects><obj type="VirtualMachine">vm-1</obj><propSet><name>name</name><val>a%2fb</val></propSet></objects>
<objects><obj type="VirtualMachine">vm-2</obj></objects></returnval></RetrievePropertiesExResponse>"#,
        )
        .unwrap();
        let (objects, token) = parse_objects(SYSTEM, &reply, "listing").unwrap();
        assert_eq!(token.as_deref(), Some("t-1"));
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].text("name"), Some("a%2fb"));
        assert_eq!(objects[1].obj, MoRef::new("VirtualMachine", "vm-2"));
        assert!(objects[1].get("name").is_none());
        let empty = crate::provider::vsphere::xml::parse("<R/>").unwrap();
        assert!(parse_objects(SYSTEM, &empty, "x").unwrap().0.is_empty());
    }

    #[test]
    fn a_refused_property_is_the_error_of_its_fault() {
        let reply = crate::provider::vsphere::xml::parse(
            r#"<R xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><returnval><objects>
<obj type="VirtualMachine">vm-1</obj><missingSet><path>config</path><fault><fault xsi:type="NoPermission">
<object type="VirtualMachine">vm-1</object><privilegeId>System.Read</privilegeId></fault></fault></missingSet>
</objects></returnval></R>"#,
        )
        .unwrap();
        let e = parse_objects(SYSTEM, &reply, "reading config of VirtualMachine:vm-1").unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("config of VirtualMachine:vm-1: privilege System.Read missing on VirtualMachine:vm-1"),
            "{e}"
        );
    }

    #[test]
    fn names_are_unescaped() {
        assert_eq!(unescape_name("a%2fb%5cc%25d"), "a/b\\c%d");
        assert_eq!(unescape_name("plain"), "plain");
    }

    #[test]
    fn prop_spec_lists_paths_in_order() {
        let mut x = Xml::new();
        prop_spec(&mut x, "VirtualMachine", &["name", "config"]);
        assert_eq!(
            x.finish(),
            "<propSet><type>VirtualMachine</type><pathSet>name</pathSet>\
             <pathSet>config</pathSet></propSet>"
        );
    }
}
