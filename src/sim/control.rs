//! The partition's controller (the production [`Controller`]) and a simulated metadata log:
//! each record commits after a random delay or is refused (a metadata leader change, after
//! which the controller starts over from the metadata), and nothing the controller decided
//! after a record is carried out before it commits, as in
//! `cluster/control/controllers.rs::carry_out`.

use super::*;
use crate::replication::controller::ControllerAction;

/// The controller's clock: a tick every 10 ms while it does not wait for the metadata.
pub(super) async fn run_controller(w: WorldRef) {
    loop {
        crate::rt::sleep(TICK).await;
        if w.borrow().controller_waiting {
            continue;
        }
        let out = {
            let mut world = w.borrow_mut();
            let now = world.rt.now_ms();
            let mut out = Vec::new();
            world.controller.tick(now, &mut out);
            out
        };
        carry_out(&w, out);
    }
}

/// A replica's message reached the controller.
pub(super) fn to_controller(w: &WorldRef, m: ControlMessage) {
    w.borrow_mut().controller_backlog.push_back(m);
    drain_backlog(w);
}

/// Feeds the controller what arrived for it, unless it waits for the metadata log.
fn drain_backlog(w: &WorldRef) {
    loop {
        let out = {
            let mut world = w.borrow_mut();
            if world.controller_waiting {
                return;
            }
            let Some(m) = world.controller_backlog.pop_front() else { return };
            let mut out = Vec::new();
            world.controller.on_message(m, &mut out);
            out
        };
        carry_out(w, out);
    }
}

/// The production driver's rule: the controller's decisions in order, each record
/// committed to the metadata log before anything after it is carried out.
fn carry_out(w: &WorldRef, out: Vec<ControllerAction>) {
    let mut actions = out.into_iter();
    while let Some(a) = actions.next() {
        match a {
            ControllerAction::Send(n, m) => send(w, None, Dest::Node(n), Net::Control(m)),
            record => {
                let mut rest = vec![record];
                rest.extend(actions);
                let (rt, delay) = {
                    let mut world = w.borrow_mut();
                    world.controller_waiting = true;
                    (world.rt.clone(), world.rng.gen_range(1..20))
                };
                let w = w.clone();
                rt.spawn_as(WORLD, async move {
                    crate::rt::sleep(Duration::from_millis(delay)).await;
                    meta_committed(&w, rest);
                });
                return;
            }
        }
    }
}

/// The metadata log answered the first record of `rest`.
fn meta_committed(w: &WorldRef, mut rest: Vec<ControllerAction>) {
    let refused = {
        let mut world = w.borrow_mut();
        world.controller_waiting = false;
        let fail_rate = world.meta_fail_rate;
        world.rng.gen_bool(fail_rate)
    };
    if refused {
        // Refused (a metadata leader change): the controller starts over from what the
        // metadata holds, and what it decided after the record is dropped.
        let mut world = w.borrow_mut();
        world.stats.metadata_write_failures += 1;
        let leader = world.meta_leader.filter(|&(e, _)| e == world.meta_epoch).map(|(_, l)| l);
        let replicas = world.controller.replicas().to_vec();
        let now = world.rt.now_ms();
        world.controller =
            Controller::resume(world.controller_config.clone(), replicas, world.meta_epoch, leader, now, now)
                .with_preferred(world.preferred);
    } else {
        {
            let mut world = w.borrow_mut();
            match rest.remove(0) {
                ControllerAction::RecordEpoch(e) => {
                    assert!(e > world.meta_epoch, "epoch {e} recorded after {}", world.meta_epoch);
                    world.meta_epoch = e;
                }
                ControllerAction::RecordLeader { epoch, leader } => {
                    assert_eq!(epoch, world.meta_epoch, "a leader recorded for epoch {epoch}, not the last one opened");
                    world.meta_leader = Some((epoch, leader));
                    world.trace(|| format!("metadata: n{leader} leads epoch {epoch}"));
                }
                ControllerAction::Send(..) => unreachable!("a record comes first"),
            }
        }
        carry_out(w, rest);
    }
    drain_backlog(w);
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
