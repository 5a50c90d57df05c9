//! Questions this node has asked the others and is waiting on: each is answered once every node
//! it waits for has answered, or when its deadline passes with whatever has arrived. No IO lives
//! here.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A finished question: the merged answer and whether every node answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Done<R> {
    /// Where the answer goes.
    pub reply: R,
    /// Subscription counts by channel, summed over the nodes that answered.
    pub counts: BTreeMap<String, u64>,
    pub complete: bool,
}

#[derive(Debug)]
struct Open<R> {
    reply: R,
    waiting: Vec<u32>,
    counts: BTreeMap<String, u64>,
    deadline: Instant,
}

/// Open questions by id.
#[derive(Debug)]
pub struct Pending<R> {
    next_id: u64,
    open: HashMap<u64, Open<R>>,
}

impl<R> Default for Pending<R> {
    fn default() -> Pending<R> {
        Pending {
            next_id: 1,
            open: HashMap::new(),
        }
    }
}

impl<R> Pending<R> {
    /// Opens a question to `nodes`. With nobody to ask it is done at once.
    pub fn open(&mut self, reply: R, nodes: Vec<u32>, deadline: Instant) -> Result<u64, Done<R>> {
        if nodes.is_empty() {
            return Err(Done {
                reply,
                counts: BTreeMap::new(),
                complete: true,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            id,
            Open {
                reply,
                waiting: nodes,
                counts: BTreeMap::new(),
                deadline,
            },
        );
        Ok(id)
    }

    /// Adds one node's answer; returns the question once no node is left to wait for. Answers
    /// to unknown questions (late ones) and repeated answers are ignored.
    pub fn answer(
        &mut self,
        id: u64,
        node: u32,
        counts: impl IntoIterator<Item = (String, u64)>,
    ) -> Option<Done<R>> {
        let open = self.open.get_mut(&id)?;
        let before = open.waiting.len();
        open.waiting.retain(|&n| n != node);
        if open.waiting.len() == before {
            return None;
        }
        for (channel, count) in counts {
            *open.counts.entry(channel).or_insert(0) += count;
        }
        if !open.waiting.is_empty() {
            return None;
        }
        let open = self.open.remove(&id)?;
        Some(Done {
            reply: open.reply,
            counts: open.counts,
            complete: true,
        })
    }

    /// Ends the questions whose deadline has passed, with what they have.
    pub fn expire(&mut self, now: Instant) -> Vec<Done<R>> {
        let late: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, open)| open.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        late.into_iter()
            .filter_map(|id| self.open.remove(&id))
            .map(Open::partial)
            .collect()
    }

    /// Ends every question with what it has: the connection they were asked on is gone.
    pub fn abandon(&mut self) -> Vec<Done<R>> {
        self.open
            .drain()
            .map(|(_, open)| Open::partial(open))
            .collect()
    }
}

impl<R> Open<R> {
    fn partial(self) -> Done<R> {
        Done {
            reply: self.reply,
            counts: self.counts,
            complete: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counts(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    #[test]
    fn answers_are_summed_and_done_when_every_node_has_answered() {
        let mut pending = Pending::default();
        let deadline = Instant::now() + Duration::from_secs(1);
        let id = pending.open("reply", vec![2, 3], deadline).unwrap();
        assert_eq!(pending.answer(id, 2, counts(&[("a", 1), ("b", 2)])), None);
        assert_eq!(
            pending.answer(id, 2, counts(&[("a", 100)])),
            None,
            "a repeated answer is ignored"
        );
        assert_eq!(
            pending.answer(id, 9, counts(&[("a", 100)])),
            None,
            "not asked"
        );
        let done = pending.answer(id, 3, counts(&[("a", 4)])).unwrap();
        assert_eq!(done.reply, "reply");
        assert!(done.complete);
        assert_eq!(
            done.counts,
            BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 2)])
        );
        assert_eq!(pending.answer(id, 3, counts(&[])), None, "already done");
    }

    #[test]
    fn with_nobody_to_ask_the_answer_is_empty_at_once() {
        let mut pending: Pending<()> = Pending::default();
        let done = pending.open((), vec![], Instant::now()).unwrap_err();
        assert!(done.complete && done.counts.is_empty());
    }

    #[test]
    fn late_or_abandoned_questions_end_with_what_they_have() {
        let mut pending = Pending::default();
        let start = Instant::now();
        let early = pending
            .open(1, vec![2, 3], start + Duration::from_secs(1))
            .unwrap();
        pending
            .open(2, vec![2], start + Duration::from_secs(5))
            .unwrap();
        pending.answer(early, 2, counts(&[("a", 1)]));
        let expired = pending.expire(start + Duration::from_secs(1));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].reply, 1);
        assert!(!expired[0].complete);
        assert_eq!(expired[0].counts, BTreeMap::from([("a".to_string(), 1)]));
        assert_eq!(pending.answer(early, 3, counts(&[])), None, "too late");
        let abandoned = pending.abandon();
        assert_eq!(abandoned.len(), 1);
        assert_eq!(abandoned[0].reply, 2);
        assert!(pending.abandon().is_empty());
    }
}
