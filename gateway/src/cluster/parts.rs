//! A snapshot that arrives in numbered parts, assembled before it replaces anything: a part out
//! of order means one was lost with a connection, and the whole snapshot is dropped (the next
//! sync sends a whole one). No IO lives here.

/// The parts of one snapshot received so far.
#[derive(Debug)]
pub struct Parts<T> {
    next_part: u32,
    items: Vec<T>,
    /// False once a part came out of order: the rest is ignored until a new part 0.
    whole: bool,
}

impl<T> Default for Parts<T> {
    fn default() -> Parts<T> {
        Parts {
            next_part: 0,
            items: Vec::new(),
            whole: false,
        }
    }
}

impl<T> Parts<T> {
    /// Takes part `part`; returns every item of the snapshot once its `last` part is in.
    pub fn take(&mut self, part: u32, last: bool, items: Vec<T>) -> Option<Vec<T>> {
        if part == 0 {
            *self = Parts {
                whole: true,
                ..Parts::default()
            };
        }
        if !self.whole || self.next_part != part {
            self.whole = false;
            self.items.clear();
            return None;
        }
        self.next_part += 1;
        self.items.extend(items);
        if !last {
            return None;
        }
        self.whole = false;
        Some(std::mem::take(&mut self.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_order_make_the_snapshot() {
        let mut parts = Parts::default();
        assert_eq!(parts.take(0, false, vec![1, 2]), None);
        assert_eq!(parts.take(1, true, vec![3]), Some(vec![1, 2, 3]));
        assert_eq!(parts.take(2, true, vec![4]), None, "after the last part");
        assert_eq!(parts.take(0, true, vec![]), Some(vec![]), "an empty one");
    }

    #[test]
    fn a_missing_part_drops_the_snapshot_until_a_new_one_starts() {
        let mut parts = Parts::default();
        assert_eq!(parts.take(0, false, vec![1]), None);
        assert_eq!(parts.take(2, true, vec![3]), None);
        assert_eq!(parts.take(1, true, vec![2]), None, "the rest is ignored");
        assert_eq!(parts.take(3, true, vec![2]), None);
        assert_eq!(parts.take(0, true, vec![5]), Some(vec![5]));
        assert_eq!(parts.take(1, true, vec![6]), None, "no part 0 before it");
    }
}
