//! The partition's controller (the production [`Controller`] and its production driver,
//! `cluster::control::carry_out`) on a simulated metadata log: each record commits after a
//! random delay or is refused (a metadata leader change, after which the controller starts
//! over from the metadata), and nothing the controller decided after a record is carried
//! out before it commits.

use super::*;
use crate::cluster::control::carry_out::{carry_out, ControllerEnv, Record, Refused};
use crate::replication::controller::ControllerAction;

/// The controller's loop, as production's `controller_loop`: it takes the replicas'
/// messages as they arrive and ticks every 10 ms, and while it carries out a decision
/// (waiting for the metadata log) it does neither.
pub(super) async fn run_controller(w: WorldRef) {
    let (rt, inbox) = {
        let world = w.borrow();
        (world.rt.clone(), world.controller_inbox.clone())
    };
    let mut next_tick = TICK.as_micros() as u64;
    loop {
        let message = w.borrow_mut().controller_backlog.pop_front();
        if let Some(m) = message {
            let out = {
                let mut world = w.borrow_mut();
                let mut out = Vec::new();
                world.controller.on_message(m, &mut out);
                out
            };
            drive(&w, out).await;
            continue;
        }
        let now = rt.now_us();
        if now >= next_tick {
            next_tick = now + TICK.as_micros() as u64;
            let out = {
                let mut world = w.borrow_mut();
                let now = world.rt.now_ms();
                let mut out = Vec::new();
                world.controller.tick(now, &mut out);
                out
            };
            drive(&w, out).await;
            continue;
        }
        crate::rt::timeout(Duration::from_micros(next_tick - now), inbox.notified()).await;
    }
}

/// A replica's message reached the controller.
pub(super) fn to_controller(w: &WorldRef, m: ControlMessage) {
    let mut world = w.borrow_mut();
    world.controller_backlog.push_back(m);
    world.controller_inbox.notify();
}

/// Carries out the controller's decisions through the production driver; a refused record
/// makes the controller start over from what the metadata holds.
async fn drive(w: &WorldRef, out: Vec<ControllerAction>) {
    if out.is_empty() {
        return;
    }
    w.borrow_mut().controller_busy = true;
    let result = carry_out(&SimMetadata { w: w.clone() }, out).await;
    let mut world = w.borrow_mut();
    world.controller_busy = false;
    if result.is_err() {
        let leader = world.meta_leader.filter(|&(e, _)| e == world.meta_epoch).map(|(_, l)| l);
        let replicas = world.controller.replicas().to_vec();
        let now = world.rt.now_ms();
        world.controller =
            Controller::resume(world.controller_config.clone(), replicas, world.meta_epoch, leader, now, now)
                .with_preferred(world.preferred);
    }
}

/// The simulated metadata log: each record commits after 1-20 ms, or is refused (a
/// metadata leader change).
struct SimMetadata {
    w: WorldRef,
}

impl ControllerEnv for SimMetadata {
    async fn record(&self, record: Record) -> Result<(), Refused> {
        let delay = self.w.borrow_mut().rng.gen_range(1..20);
        crate::rt::sleep(Duration::from_millis(delay)).await;
        let mut world = self.w.borrow_mut();
        let fail_rate = world.meta_fail_rate;
        if world.rng.gen_bool(fail_rate) {
            world.stats.metadata_write_failures += 1;
            return Err(Refused { record: format!("{record:?}"), reason: "a metadata leader change".into() });
        }
        match record {
            Record::Epoch(e) => {
                assert!(e > world.meta_epoch, "epoch {e} recorded after {}", world.meta_epoch);
                world.meta_epoch = e;
            }
            Record::Leader { epoch, leader } => {
                assert_eq!(epoch, world.meta_epoch, "a leader recorded for epoch {epoch}, not the last one opened");
                world.meta_leader = Some((epoch, leader));
                world.trace(|| format!("metadata: n{leader} leads epoch {epoch}"));
            }
        }
        Ok(())
    }

    fn send(&self, node: NodeId, messages: Vec<ControlMessage>) {
        for m in messages {
            send(&self.w, None, Dest::Node(node), Net::Control(m));
        }
    }
}

/// A replica acts on the controller's message only with what the metadata log holds: its
/// epoch is recorded, and an appointment is the one recorded.
pub(super) fn check_recorded(w: &WorldRef, n: NodeId, m: &ControlMessage) {
    let mut world = w.borrow_mut();
    world.stats.metadata_checks += 1;
    match m {
        ControlMessage::Fence { epoch } | ControlMessage::BecomeFollower { epoch, .. } => {
            assert!(*epoch <= world.meta_epoch, "n{n} got epoch {epoch} before the metadata recorded it");
        }
        ControlMessage::BecomeLeader { epoch, .. } => {
            assert_eq!(world.meta_leader, Some((*epoch, n)), "n{n} appointed for epoch {epoch} without the record");
        }
        _ => {}
    }
}
