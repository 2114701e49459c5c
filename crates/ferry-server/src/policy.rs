//! The policy loop: closes idle pooled connections and idle SQL windows on every tick.

use crate::SharedState;

pub async fn run(state: SharedState) {
    let mut tick = tokio::time::interval(state.config.policy_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::sessions::enforce_timeouts(&state);
        for pool in state.instances.cached() {
            pool.close_idle_connections();
        }
    }
}
