//! VMs: what they look like ([`Client::vm_info`], [`Client::snapshot_info`]), tasks, and the
//! task-based operations a migration needs (snapshots, power, reconfigure, create, destroy).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Client;
use super::client::unexpected;
use super::devices;
use super::inventory::{ObjectContent, unescape_name};
use super::soap::Fault;
use super::spec::ConfigSpec;
use super::types::{Firmware, MoRef, NicBacking, PowerState, SnapshotInfo, SnapshotNode, VmInfo};
use super::xml::{Elem, Xml};
use crate::{Error, Result};

/// First and longest pause between two polls of a task.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(2);

/// VM properties [`Client::vm_info`] reads.
const VM_PROPS: [&str; 6] = [
    "name",
    "config",
    "runtime.powerState",
    "runtime.host",
    "resourcePool",
    "snapshot",
];

impl Client {
    /// Shape, disks, NICs and snapshots of `vm`.
    pub async fn vm_info(&self, vm: &MoRef) -> Result<VmInfo> {
        let p = self.properties(vm, &VM_PROPS).await?;
        let config = p.get("config").ok_or_else(|| {
            Error::Invalid(format!(
                "{}: {vm} has no configuration (inaccessible or orphaned VM)",
                self.system
            ))
        })?;
        let mut info = vm_info_from(vm, &p, config)?;
        self.resolve_portgroups(&mut info).await;
        Ok(info)
    }

    /// Names the distributed port groups NICs are on; a port group that cannot be read keeps
    /// `name: None`.
    async fn resolve_portgroups(&self, info: &mut VmInfo) {
        let mut names: HashMap<String, Option<String>> = HashMap::new();
        for nic in &mut info.nics {
            let NicBacking::DistributedPortgroup {
                portgroup_key,
                name,
                ..
            } = &mut nic.backing
            else {
                continue;
            };
            if !names.contains_key(portgroup_key) {
                let pg = MoRef::new("DistributedVirtualPortgroup", portgroup_key.clone());
                let found = self.name_of(&pg).await.ok();
                names.insert(portgroup_key.clone(), found);
            }
            name.clone_from(&names[portgroup_key]);
        }
    }

    /// The disks of snapshot `snap` as they were when it was taken.
    pub async fn snapshot_info(&self, snap: &MoRef) -> Result<SnapshotInfo> {
        let p = self.properties(snap, &["config", "vm"]).await?;
        let context = format!("reading {snap}");
        let hardware = p
            .get("config")
            .and_then(|c| c.child("hardware"))
            .ok_or_else(|| unexpected(&self.system, &context, "no config.hardware"))?;
        let vm = p
            .moref("vm")
            .ok_or_else(|| unexpected(&self.system, &context, "no vm"))?;
        let d = devices::parse(hardware);
        Ok(SnapshotInfo {
            snapshot: snap.clone(),
            vm,
            controllers: d.controllers,
            disks: d.disks,
        })
    }

    /// Waits until `task` ends; returns its result when that is a moref (the VM created, the
    /// snapshot taken...). A failed task is the error of its fault, naming the task and its target.
    pub async fn wait_task(&self, task: &MoRef, deadline: Instant) -> Result<Option<MoRef>> {
        let mut pause = POLL_MIN;
        loop {
            let info = self.properties(task, &["info"]).await?;
            let info = info
                .get("info")
                .ok_or_else(|| unexpected(&self.system, &format!("reading {task}"), "no info"))?;
            match info.text_at("state") {
                Some("success") => return Ok(info.moref_at("result")),
                Some("error") => return Err(self.task_error(task, info)),
                _ => {}
            }
            if Instant::now() + pause > deadline {
                return Err(Error::transient(
                    &self.system,
                    format!(
                        "{} did not finish in time (state {}, {}% done)",
                        task_label(task, info),
                        info.text_at("state").unwrap_or("?"),
                        info.text_at("progress").unwrap_or("0")
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    fn task_error(&self, task: &MoRef, info: &Elem) -> Error {
        let fault = info
            .child("error")
            .map(Fault::from_localized)
            .unwrap_or(Fault {
                name: "TaskFailed".into(),
                message: "the task failed without a fault".into(),
                fields: Vec::new(),
            });
        fault.into_error(&self.system, &task_label(task, info))
    }

    /// Calls a `*_Task` method and waits (at most the client's task timeout) for the task.
    pub async fn run_task(&self, method: &str, this: &MoRef, args: Xml) -> Result<Option<MoRef>> {
        let reply = self.call(method, this, args).await?;
        let task = reply
            .moref_at("returnval")
            .ok_or_else(|| unexpected(&self.system, &format!("{method} on {this}"), "no task"))?;
        self.wait_task(&task, Instant::now() + self.task_timeout)
            .await
    }

    /// Snapshots `vm` (memory and quiescing as asked) and returns the snapshot.
    pub async fn create_snapshot(
        &self,
        vm: &MoRef,
        name: &str,
        description: &str,
        memory: bool,
        quiesce: bool,
    ) -> Result<MoRef> {
        let mut x = Xml::new();
        x.text("name", name)
            .text("description", description)
            .text("memory", memory)
            .text("quiesce", quiesce);
        let method = "CreateSnapshot_Task";
        self.run_task(method, vm, x)
            .await?
            .ok_or_else(|| unexpected(&self.system, &format!("{method} on {vm}"), "no snapshot"))
    }

    /// Removes snapshot `snap` (with its children when asked), consolidating the disks.
    pub async fn remove_snapshot(
        &self,
        snap: &MoRef,
        remove_children: bool,
        consolidate: bool,
    ) -> Result<()> {
        let mut x = Xml::new();
        x.text("removeChildren", remove_children)
            .text("consolidate", consolidate);
        self.run_task("RemoveSnapshot_Task", snap, x).await?;
        Ok(())
    }

    /// Powers `vm` on.
    pub async fn power_on(&self, vm: &MoRef) -> Result<()> {
        self.run_task("PowerOnVM_Task", vm, Xml::new()).await?;
        Ok(())
    }

    /// Powers `vm` off (hard).
    pub async fn power_off(&self, vm: &MoRef) -> Result<()> {
        self.run_task("PowerOffVM_Task", vm, Xml::new()).await?;
        Ok(())
    }

    /// Asks the guest of `vm` to shut down (VMware Tools); returns at once, the VM powers off
    /// when the guest is done.
    pub async fn shutdown_guest(&self, vm: &MoRef) -> Result<()> {
        self.call("ShutdownGuest", vm, Xml::new()).await?;
        Ok(())
    }

    /// Deletes `vm` and its files (the VM must be powered off).
    pub async fn destroy(&self, vm: &MoRef) -> Result<()> {
        self.run_task("Destroy_Task", vm, Xml::new()).await?;
        Ok(())
    }

    /// Applies `spec` to `vm`.
    pub async fn reconfigure(&self, vm: &MoRef, spec: &ConfigSpec) -> Result<()> {
        let mut x = Xml::new();
        spec.write("spec", &mut x);
        self.run_task("ReconfigVM_Task", vm, x).await?;
        Ok(())
    }

    /// Creates a VM from `spec` in `folder` and resource pool `pool` (on `host` when given).
    pub async fn create_vm(
        &self,
        folder: &MoRef,
        pool: &MoRef,
        host: Option<&MoRef>,
        spec: &ConfigSpec,
    ) -> Result<MoRef> {
        let mut x = Xml::new();
        spec.write("config", &mut x);
        x.moref("pool", pool);
        if let Some(h) = host {
            x.moref("host", h);
        }
        let method = "CreateVM_Task";
        self.run_task(method, folder, x)
            .await?
            .ok_or_else(|| unexpected(&self.system, &format!("{method} on {folder}"), "no VM"))
    }
}

/// `task-12 (VirtualMachine.createSnapshot) on VM "web01"`.
fn task_label(task: &MoRef, info: &Elem) -> String {
    let what = info
        .text_at("descriptionId")
        .filter(|s| !s.is_empty())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let target = match (info.text_at("entityName"), info.moref_at("entity")) {
        (Some(n), Some(e)) if !n.is_empty() && n != e.value => format!(" on {n:?} ({e})"),
        (_, Some(e)) => format!(" on {e}"),
        _ => String::new(),
    };
    format!("task {}{what}{target}", task.value)
}

/// Builds a [`VmInfo`] from the properties read (`config` present).
fn vm_info_from(vm: &MoRef, p: &ObjectContent, config: &Elem) -> Result<VmInfo> {
    let hw = config.child("hardware").cloned().unwrap_or_default();
    let d = devices::parse(&hw);
    let (snapshots, current_snapshot) = p.get("snapshot").map(snapshot_tree).unwrap_or_default();
    let state = p.text("runtime.powerState").unwrap_or_default();
    Ok(VmInfo {
        moref: vm.clone(),
        name: unescape_name(p.text("name").unwrap_or_default()),
        instance_uuid: config.string_at("instanceUuid"),
        power_state: PowerState::parse(state)
            .ok_or_else(|| Error::Invalid(format!("{vm}: unknown power state {state:?}")))?,
        num_cpu: hw.parse_at("numCPU").unwrap_or(1),
        num_cores_per_socket: hw.parse_at("numCoresPerSocket").unwrap_or(1),
        memory_mb: hw.parse_at("memoryMB").unwrap_or(0),
        firmware: match config.text_at("firmware") {
            Some("efi") => Firmware::Efi,
            _ => Firmware::Bios,
        },
        guest_id: config.string_at("guestId"),
        annotation: config.string_at("annotation"),
        vm_path_name: config.string_at("files/vmPathName"),
        extra_config: config
            .all("extraConfig")
            .map(|o| (o.string_at("key"), o.string_at("value")))
            .collect(),
        controllers: d.controllers,
        disks: d.disks,
        nics: d.nics,
        snapshots,
        current_snapshot,
        host: p.moref("runtime.host"),
        resource_pool: p.moref("resourcePool"),
    })
}

/// Reads a `VirtualMachineSnapshotInfo`: the root snapshots and the current one.
fn snapshot_tree(info: &Elem) -> (Vec<SnapshotNode>, Option<MoRef>) {
    let roots = info
        .all("rootSnapshotList")
        .filter_map(snapshot_node)
        .collect();
    (roots, info.moref_at("currentSnapshot"))
}

fn snapshot_node(e: &Elem) -> Option<SnapshotNode> {
    Some(SnapshotNode {
        name: e.string_at("name"),
        description: e.string_at("description"),
        snapshot: e.moref_at("snapshot")?,
        children: e
            .all("childSnapshotList")
            .filter_map(snapshot_node)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::vsphere::xml;

    #[test]
    fn snapshot_tree_with_children() {
        let e = xml::parse(
            r#"<val xmlns="urn:vim25"><currentSnapshot type="VirtualMachineSnapshot">snapshot-3</currentSnapshot>
<rootSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-1</snapshot><name>a</name><description>d</description>
 <childSnapshotList><snapshot type="VirtualMachineSnapshot">snapshot-3</snapshot><name>b</name></childSnapshotList>
</rootSnapshotList></val>"#,
        )
        .unwrap();
        let (roots, current) = snapshot_tree(&e);
        assert_eq!(
            current,
            Some(MoRef::new("VirtualMachineSnapshot", "snapshot-3"))
        );
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].name, "a");
        assert_eq!(roots[0].children[0].name, "b");
        let all: Vec<&str> = roots[0].walk().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(all, ["a", "b"]);
    }

    #[test]
    fn task_labels_name_the_target() {
        let bare = xml::parse(
            r#"<info xmlns="urn:vim25"><entity type="VirtualMachine">vm-7</entity><entityName>vm-7</entityName></info>"#,
        )
        .unwrap();
        assert_eq!(
            task_label(&MoRef::new("Task", "task-1"), &bare),
            "task task-1 on VirtualMachine:vm-7"
        );
        let info = xml::parse(
            r#"<info xmlns="urn:vim25"><descriptionId>VirtualMachine.createSnapshot</descriptionId>
<entity type="VirtualMachine">vm-7</entity><entityName>web01</entityName></info>"#,
        )
        .unwrap();
        assert_eq!(
            task_label(&MoRef::new("Task", "task-12"), &info),
            "task task-12 (VirtualMachine.createSnapshot) on \"web01\" (VirtualMachine:vm-7)"
        );
    }
}
