//! Sends acks (or naks, terms) as requests and gathers nats-server's
//! answers: one reply subscription and one deadline for the whole batch,
//! rather than a request, an inbox entry and a timer per token.

use std::time::Duration;

use async_nats::{Client, StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use crate::app::{server_read_all, SUBSCRIPTION_CAPACITY};

/// What came back for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// nats-server processed it.
    Done,
    /// Nobody listens on the token's subject: the consumer is gone (or
    /// has no leader right now).
    NoResponders,
    /// nats-server answered with an error status, or the send failed.
    Failed(String),
    /// Nothing came before the deadline.
    Silent,
}

/// Tokens sent and not yet answered, at most: the replies of a window fit
/// the subscription's buffer, so none is dropped while more are sent.
const WINDOW: usize = SUBSCRIPTION_CAPACITY / 2;

/// What one reply says.
fn answer_of(m: &async_nats::Message) -> Answer {
    match m.status {
        None | Some(StatusCode::OK) => Answer::Done,
        Some(StatusCode::NO_RESPONDERS) => Answer::NoResponders,
        Some(s) => Answer::Failed(format!(
            "nats-server answered {s}{}",
            m.description
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        )),
    }
}

/// Which token a reply on `<inbox>.<i>` answers.
fn index_of(reply_subject: &str, inbox: &str, n: usize) -> Option<usize> {
    let i: usize = reply_subject
        .strip_prefix(inbox)?
        .strip_prefix('.')?
        .parse()
        .ok()?;
    (i < n).then_some(i)
}

/// Sends `payload` to each of `tokens` with a reply subject of its own and
/// returns the answers in the tokens' order; what is still unanswered
/// after `timeout` is `Silent`.
pub(super) async fn send_all(
    client: &Client,
    tokens: &[&str],
    payload: Bytes,
    timeout: Duration,
) -> Vec<Answer> {
    let n = tokens.len();
    let mut answers: Vec<Option<Answer>> = vec![None; n];
    let deadline = tokio::time::sleep_until(Instant::now() + timeout);
    tokio::pin!(deadline);
    let inbox = client.new_inbox();
    // Subscribed before the first ack goes out (the same connection
    // carries both, in order), so no answer comes before it.
    let mut replies = match client.subscribe(format!("{inbox}.*")).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot subscribe to the answers: {e}");
            return vec![Answer::Failed(why); n];
        }
    };
    let (mut sent, mut answered) = (0, 0);
    while answered < n {
        if sent < n && sent - answered < WINDOW {
            let reply = Subject::from(format!("{inbox}.{sent}"));
            let subject = Subject::from(tokens[sent]);
            if let Err(e) = client
                .publish_with_reply(subject, reply, payload.clone())
                .await
            {
                answers[sent] = Some(Answer::Failed(format!("cannot send it: {e}")));
                answered += 1;
            }
            sent += 1;
            continue;
        }
        tokio::select! {
            m = replies.next() => {
                let Some(m) = m else { break };
                let Some(i) = index_of(m.subject.as_str(), &inbox, sent) else {
                    continue;
                };
                if answers[i].is_none() {
                    answers[i] = Some(answer_of(&m));
                    answered += 1;
                }
            }
            _ = &mut deadline => break,
        }
    }
    // Dropping the subscription unsubscribes.
    answers
        .into_iter()
        .map(|a| a.unwrap_or(Answer::Silent))
        .collect()
}

/// Sends `payload` to each of `tokens` without reply subjects, then a
/// request to a subject nobody listens on: its "no responders" answer
/// comes once nats-server has read everything sent before it (it reads a
/// connection's messages in order), whether or not it acted on the tokens
/// yet.
pub(super) async fn send_unconfirmed(
    client: &Client,
    tokens: &[&str],
    payload: Bytes,
) -> Result<(), String> {
    for t in tokens {
        client
            .publish(Subject::from(*t), payload.clone())
            .await
            .map_err(|e| format!("cannot send the tokens: {e}"))?;
    }
    server_read_all(client)
        .await
        .map_err(|e| format!("nats-server did not confirm receiving the tokens: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_maps_back_to_its_token_only_under_this_inbox() {
        let inbox = "_INBOX.abc";
        assert_eq!(index_of("_INBOX.abc.0", inbox, 3), Some(0));
        assert_eq!(index_of("_INBOX.abc.2", inbox, 3), Some(2));
        assert_eq!(index_of("_INBOX.abc.3", inbox, 3), None, "never sent");
        assert_eq!(index_of("_INBOX.abcd.1", inbox, 3), None);
        assert_eq!(index_of("_INBOX.other.1", inbox, 3), None);
        assert_eq!(index_of("_INBOX.abc.x", inbox, 3), None);
        assert_eq!(index_of("_INBOX.abc.-1", inbox, 3), None);
    }

    #[test]
    fn replies_say_done_gone_or_why_not() {
        let msg = |status: Option<StatusCode>, description: Option<&str>| async_nats::Message {
            subject: "_INBOX.x.0".into(),
            reply: None,
            payload: Bytes::new(),
            headers: None,
            status,
            description: description.map(String::from),
            length: 0,
        };
        assert_eq!(answer_of(&msg(None, None)), Answer::Done);
        assert_eq!(
            answer_of(&msg(Some(StatusCode::NO_RESPONDERS), None)),
            Answer::NoResponders
        );
        assert_eq!(
            answer_of(&msg(
                Some(StatusCode::REQUEST_TERMINATED),
                Some("Consumer Deleted")
            )),
            Answer::Failed("nats-server answered 409 (Consumer Deleted)".into())
        );
    }
}
