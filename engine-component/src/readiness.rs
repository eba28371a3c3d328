//! The readiness filter (ENGINE.md 5.3, `isServiceReadyToSync`): whether an identity may be
//! listed on an address sent to NRP. It orders "register before publishing" and "drain before
//! unregistering".

use crate::config::ServiceKind;
use crate::identity::Identity;
use crate::nrp::NrpMirror;
use crate::state::{OpTable, ResourceState};

pub fn is_ready(ops: &OpTable, nrp: &NrpMirror, id: &Identity, kind: ServiceKind) -> bool {
    let exists = match kind {
        ServiceKind::Inbound => nrp.has_load_balancer(id),
        ServiceKind::Outbound => nrp.has_nat_gateway(id),
    };
    let Some(op) = ops.get(id) else { return exists };
    if op.kind() != kind {
        return exists;
    }
    match op.state {
        ResourceState::Created | ResourceState::UpdateInProgress => true,
        ResourceState::NotStarted | ResourceState::CreationInProgress => exists,
        ResourceState::DeletionPending | ResourceState::DeletionInProgress => false,
        ResourceState::Unknown(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;
    use crate::io::ObjectRef;
    use crate::state::Operation;

    fn op(state: ResourceState) -> Operation {
        let cfg = ServiceConfig::bare(Identity::new("a"), ServiceKind::Inbound, ObjectRef::default());
        Operation::new(cfg, state, 0, String::new())
    }

    #[test]
    fn s103_readiness_table() {
        let id = Identity::new("a");
        let mut nrp = NrpMirror::default();
        let mut ops = OpTable::default();
        assert!(!is_ready(&ops, &nrp, &id, ServiceKind::Inbound), "untracked, not in NRP");
        nrp.set_load_balancer(&id, true);
        assert!(is_ready(&ops, &nrp, &id, ServiceKind::Inbound), "adopted: exists in NRP");
        assert!(!is_ready(&ops, &nrp, &id, ServiceKind::Outbound), "other kind looks at NATs");
        for (state, in_nrp, want) in [
            (ResourceState::Created, false, true),
            (ResourceState::UpdateInProgress, false, true),
            (ResourceState::NotStarted, false, false),
            (ResourceState::NotStarted, true, true),
            (ResourceState::CreationInProgress, false, false),
            (ResourceState::CreationInProgress, true, true),
            (ResourceState::DeletionPending, true, false),
            (ResourceState::DeletionInProgress, true, false),
            (ResourceState::Unknown(9), true, false),
        ] {
            nrp.set_load_balancer(&id, in_nrp);
            ops.insert(id.clone(), op(state));
            assert_eq!(is_ready(&ops, &nrp, &id, ServiceKind::Inbound), want, "{state:?} in_nrp={in_nrp}");
        }
        // An op of the other kind answers existsInNRP.
        nrp.set_nat_gateway(&id, false);
        ops.insert(id.clone(), op(ResourceState::Created));
        assert!(!is_ready(&ops, &nrp, &id, ServiceKind::Outbound));
    }
}
