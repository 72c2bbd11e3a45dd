//! The engine's event stream, narrowed to this instance's runners dying,
//! OOM-killed or removed.

use std::collections::HashMap;

use futures_util::StreamExt;

use super::DockerBackend;
use crate::backend::labels::kind_of;
use crate::backend::{EngineError, RunnerEvent, RunnerEvents};
use crate::config::SESSION_LABEL;

impl DockerBackend {
    /// The stream ends when the engine restarts or the connection drops.
    pub(super) fn runner_events(&self, since: i64) -> RunnerEvents {
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["die", "oom", "destroy"]),
            ("label", vec![SESSION_LABEL]),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let spec = self.spec.clone();
        self.docker
            .events(Some(options))
            .filter_map(move |event| {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => return std::future::ready(Some(Err(EngineError::from(error)))),
                };
                let actor = event.actor.unwrap_or_default();
                let attributes = actor.attributes.unwrap_or_default();
                let parsed = attributes
                    .get(SESSION_LABEL)
                    .filter(|_| spec.owns(&attributes))
                    .map(|session| {
                        let action = event.action.unwrap_or_default();
                        let description = match attributes.get("exitCode") {
                            Some(code) => format!("{action} (exit code {code})"),
                            None => action,
                        };
                        Ok(RunnerEvent {
                            session_id: session.clone(),
                            runner_id: actor.id.unwrap_or_default(),
                            kind: kind_of(&attributes),
                            description,
                            time: event.time.unwrap_or_default(),
                        })
                    });
                std::future::ready(parsed)
            })
            .boxed()
    }
}
