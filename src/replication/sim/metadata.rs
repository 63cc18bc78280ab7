//! The simulated metadata log and the controller's driver: each record commits after a
//! random delay or is refused (a metadata leader change, after which the controller starts
//! over from the metadata), and nothing the controller decided after a record is carried out
//! before it commits, as in `cluster/control/controllers.rs::carry_out`.

use super::*;

impl Sim {
    /// Feeds the controller what arrived for it, unless it waits for the metadata log.
    pub(super) fn drain_controller_backlog(&mut self) {
        while !self.controller_waiting {
            let Some(m) = self.controller_backlog.pop_front() else { return };
            let mut out = Vec::new();
            self.controller.on_message(m, &mut out);
            self.carry_out(out);
        }
    }

    /// The production driver's rule: the controller's decisions in order, each record
    /// committed to the metadata log before anything after it is carried out.
    pub(super) fn carry_out(&mut self, out: Vec<ControllerAction>) {
        let mut actions = out.into_iter();
        while let Some(a) = actions.next() {
            match a {
                ControllerAction::Send(n, m) => self.send(None, Dest::Node(n), Msg::Control(m)),
                record => {
                    let mut rest = vec![record];
                    rest.extend(actions);
                    self.controller_waiting = true;
                    let at = self.now + self.rng.gen_range(1..20);
                    self.schedule(at, Event::MetaCommitted { rest });
                    return;
                }
            }
        }
    }

    /// The metadata log answered the first record of `rest`.
    pub(super) fn meta_committed(&mut self, mut rest: Vec<ControllerAction>) {
        self.controller_waiting = false;
        if self.rng.gen_bool(self.meta_fail_rate) {
            // Refused (a metadata leader change): the controller starts over from what the
            // metadata holds, and what it decided after the record is dropped.
            self.stats.metadata_write_failures += 1;
            let leader = self.meta_leader.filter(|&(e, _)| e == self.meta_epoch).map(|(_, l)| l);
            let replicas = self.controller.replicas().to_vec();
            self.controller = Controller::resume(
                self.controller_config.clone(),
                replicas,
                self.meta_epoch,
                leader,
                self.now,
                self.now,
            )
            .with_preferred(self.preferred);
        } else {
            match rest.remove(0) {
                ControllerAction::RecordEpoch(e) => {
                    assert!(e > self.meta_epoch, "epoch {e} recorded after {}", self.meta_epoch);
                    self.meta_epoch = e;
                }
                ControllerAction::RecordLeader { epoch, leader } => {
                    assert_eq!(epoch, self.meta_epoch, "a leader recorded for epoch {epoch}, not the last one opened");
                    self.meta_leader = Some((epoch, leader));
                }
                ControllerAction::Send(..) => unreachable!("a record comes first"),
            }
            self.carry_out(rest);
        }
        self.drain_controller_backlog();
    }

    /// A replica acts on the controller's message only with what the metadata log holds: its
    /// epoch is recorded, and an appointment is the one recorded.
    pub(super) fn check_recorded(&mut self, n: NodeId, m: &ControlMessage) {
        self.stats.metadata_checks += 1;
        match m {
            ControlMessage::Fence { epoch } | ControlMessage::BecomeFollower { epoch, .. } => {
                assert!(*epoch <= self.meta_epoch, "n{n} got epoch {epoch} before the metadata recorded it");
            }
            ControlMessage::BecomeLeader { epoch, .. } => {
                assert_eq!(self.meta_leader, Some((*epoch, n)), "n{n} appointed for epoch {epoch} without the record");
            }
            _ => {}
        }
    }
}
