//! The VirtualMachine validator: its `providerRef` names the hypervisor a migration reads (and, with
//! deleteSource, deletes) the VM on, so its author must be allowed to read that Provider. Checked on
//! create and on every change of the spec.

use crd::VirtualMachineSpec;

use crate::admission::{Admission, Request, Validate, Verdict};
use crate::cluster::Access;

#[async_trait::async_trait]
impl Validate<VirtualMachineSpec> for Admission {
    async fn create(&self, request: &Request<'_>, spec: VirtualMachineSpec) -> Verdict {
        let mut verdict = Verdict::default();
        let provider = &spec.provider_ref;
        let ns = provider.namespace_or(request.namespace);
        let access = Access::provider("get", ns, &provider.name);
        self.require(&mut verdict, request, "spec.providerRef", &access, "")
            .await;
        verdict
    }
}
