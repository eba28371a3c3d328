//! Scenario tests (ENGINE.md section 13), driven through the public surface with the
//! [`crate::testkit::Harness`]. Test names carry the scenario number as `sNNN`.

mod batching;
mod call_ids;
mod common;
mod create;
mod delete;
mod dual_stack;
mod egress;
mod endpoint_scenarios;
mod golden;
mod identities;
mod lifecycle;
mod location_sync;
mod misc;
mod pod_finalizers;
mod props;
mod props_egress;
mod registrations;
mod retry;
mod scale;
mod startup;
mod throttling;
mod update;
