//! A linearizability checker for histories of reads, writes and
//! compare-and-sets on registers (the Wing & Gong search with Lowe's
//! memoisation, as Porcupine and Knossos do it), written here.
//!
//! Linearizability is compositional, so each register (key) is checked on
//! its own. An operation whose outcome is unknown (the client timed out or
//! the connection broke) may have taken effect at any point after it was
//! invoked, or never: it is given no completion time, and a compare-and-set
//! of unknown outcome may fail as well as succeed. Reads of unknown outcome
//! tell nothing and are dropped.
//!
//! Every pending unknown operation doubles what the search may try, so a
//! history with hundreds of them that is *not* linearizable would take
//! forever to refute. Values are unique per write, so an unknown write (or
//! compare-and-set) whose value nobody read can always be placed last,
//! where it changes nothing anyone saw: the search runs first without
//! those. If that fails, it runs again with them (they might explain a
//! refused compare-and-set), within a budget of steps; a history still not
//! placed is reported as not linearizable.

use std::collections::HashSet;
use std::time::Instant;

/// What a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Read the register.
    Read,
    /// Set it to a value.
    Write(u64),
    /// Set it to `new` if it holds `expect`.
    Cas {
        /// The value the client last read.
        expect: u64,
        /// The value to set.
        new: u64,
    },
}

/// What the client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read's value.
    Read(u64),
    /// A write or a compare-and-set took effect.
    Ok,
    /// A compare-and-set was refused (the register did not hold `expect`).
    Refused,
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Which client ran it (for messages).
    pub client: usize,
    /// Which register.
    pub key: usize,
    pub call: Call,
    pub outcome: Outcome,
    /// When the request was begun.
    pub invoked: Instant,
    /// When the answer came; `None` when there was none.
    pub completed: Option<Instant>,
}

/// The register's next value if `op` can take effect on `value` with the
/// outcome the client saw.
fn step(value: u64, op: &Operation) -> Option<u64> {
    match (op.call, op.outcome) {
        (Call::Read, Outcome::Read(v)) => (v == value).then_some(value),
        (Call::Write(v), Outcome::Ok | Outcome::Unknown) => Some(v),
        (Call::Cas { expect, new }, Outcome::Ok) => (value == expect).then_some(new),
        (Call::Cas { expect, .. }, Outcome::Refused) => (value != expect).then_some(value),
        (Call::Cas { expect, new }, Outcome::Unknown) => {
            Some(if value == expect { new } else { value })
        }
        _ => None,
    }
}

/// One event of the search's list: an operation's call or return.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
    /// For a call, the index of its return event.
    partner: usize,
    prev: usize,
    next: usize,
}

/// How many steps a search may take before it gives up.
const BUDGET: u64 = 2_000_000;

/// What one search found.
enum Verdict {
    Linearizable,
    /// Not linearizable, or not decided within the budget: why.
    Not(String),
}

/// Checks one register's history, which starts at `initial`. `Err` names
/// the operation the search could not place, with what it had placed.
pub fn check(initial: u64, history: &[Operation]) -> Result<(), String> {
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| !(o.call == Call::Read && o.outcome == Outcome::Unknown))
        .collect();
    let observed: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match (o.call, o.outcome) {
            (_, Outcome::Read(v)) => Some(v),
            (Call::Cas { expect, .. }, _) => Some(expect),
            _ => None,
        })
        .collect();
    let unseen = |o: &&&Operation| {
        o.outcome == Outcome::Unknown
            && match o.call {
                Call::Write(v) | Call::Cas { new: v, .. } => !observed.contains(&v),
                Call::Read => false,
            }
    };
    let reduced: Vec<&Operation> = ops.iter().filter(|o| !unseen(o)).copied().collect();
    let Verdict::Not(why) = search(initial, &reduced) else {
        return Ok(());
    };
    if reduced.len() == ops.len() {
        return Err(why);
    }
    match search(initial, &ops) {
        Verdict::Linearizable => Ok(()),
        Verdict::Not(_) => Err(why),
    }
}

/// The Wing & Gong search with Lowe's memoisation over `ops`.
fn search(initial: u64, ops: &[&Operation]) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    let base = ops
        .iter()
        .map(|o| o.invoked)
        .min()
        .unwrap_or_else(Instant::now);
    let at = |t: Instant| t.saturating_duration_since(base).as_nanos();
    // Calls before returns at the same instant: such operations count as
    // concurrent.
    let mut order: Vec<(u128, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        order.push((at(o.invoked), false, i));
        order.push((o.completed.map_or(u128::MAX, at), true, i));
    }
    order.sort_unstable();
    // Events 0..2n in time order, then the head (2n) and tail (2n + 1).
    let n = order.len();
    let (head, tail) = (n, n + 1);
    let mut events: Vec<Event> = Vec::with_capacity(n + 2);
    let mut return_of = vec![0; ops.len()];
    for (pos, &(_, is_return, op)) in order.iter().enumerate() {
        if is_return {
            return_of[op] = pos;
        }
        events.push(Event {
            op,
            call: !is_return,
            partner: 0,
            prev: if pos == 0 { head } else { pos - 1 },
            next: if pos + 1 == n { tail } else { pos + 1 },
        });
    }
    for e in events.iter_mut().filter(|e| e.call) {
        e.partner = return_of[e.op];
    }
    events.push(Event {
        op: 0,
        call: false,
        partner: 0,
        prev: head,
        next: 0,
    });
    events.push(Event {
        op: 0,
        call: false,
        partner: 0,
        prev: n - 1,
        next: tail,
    });
    events[head].next = 0;

    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, u64)> = HashSet::new();
    let mut stack: Vec<(usize, u64)> = Vec::new();
    let mut value = initial;
    let mut deepest = (0, 0);
    let mut entry = events[head].next;
    let mut steps = 0u64;
    loop {
        if events[head].next == tail {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > BUDGET {
            return Verdict::Not(format!(
                "not placed within {BUDGET} steps: {} of {} operations placed at most",
                deepest.0,
                ops.len()
            ));
        }
        let e = events[entry];
        if e.call {
            if let Some(next) = step(value, ops[e.op]) {
                placed[e.op / 64] |= 1 << (e.op % 64);
                if seen.insert((placed.clone(), next)) {
                    stack.push((entry, value));
                    value = next;
                    // Lift the call and its return out of the list.
                    for i in [entry, e.partner] {
                        let (p, q) = (events[i].prev, events[i].next);
                        events[p].next = q;
                        events[q].prev = p;
                    }
                    if stack.len() > deepest.0 {
                        deepest = (stack.len(), e.op);
                    }
                    entry = events[head].next;
                    continue;
                }
                placed[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else {
            // An operation returned before it could be placed: undo the
            // last placement and try the next candidate after it.
            let Some((call, before)) = stack.pop() else {
                let stuck = ops[e.op];
                return Verdict::Not(format!(
                    "not linearizable: {} of {} operations placed at most; none can be placed \
                     before this one returns: {stuck:?} (register starting at {initial})",
                    deepest.0,
                    ops.len()
                ));
            };
            value = before;
            let c = events[call];
            placed[c.op / 64] &= !(1 << (c.op % 64));
            // Put back in the reverse order of lifting.
            for i in [c.partner, call] {
                let (p, q) = (events[i].prev, events[i].next);
                events[p].next = i;
                events[q].prev = i;
            }
            entry = events[call].next;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn op(call: Call, outcome: Outcome, from: u64, to: Option<u64>) -> Operation {
        let t0 = base();
        Operation {
            client: 0,
            key: 0,
            call,
            outcome,
            invoked: t0 + Duration::from_millis(from),
            completed: to.map(|t| t0 + Duration::from_millis(t)),
        }
    }

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    #[test]
    fn a_sequential_history_that_follows_the_register_passes() {
        let h = [
            op(Call::Write(1), Outcome::Ok, 0, Some(1)),
            op(Call::Read, Outcome::Read(1), 2, Some(3)),
            op(Call::Cas { expect: 1, new: 2 }, Outcome::Ok, 4, Some(5)),
            op(
                Call::Cas { expect: 1, new: 3 },
                Outcome::Refused,
                6,
                Some(7),
            ),
            op(Call::Read, Outcome::Read(2), 8, Some(9)),
        ];
        assert_eq!(check(0, &h), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_fails() {
        let h = [
            op(Call::Write(1), Outcome::Ok, 0, Some(1)),
            op(Call::Write(2), Outcome::Ok, 2, Some(3)),
            op(Call::Read, Outcome::Read(1), 4, Some(5)),
        ];
        assert!(check(0, &h).is_err());
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [0, 2] {
            let h = [
                op(Call::Write(2), Outcome::Ok, 2, Some(6)),
                op(Call::Read, Outcome::Read(seen), 3, Some(4)),
            ];
            assert_eq!(check(0, &h), Ok(()), "saw {seen}");
        }
        // But not a value nobody wrote.
        let h = [
            op(Call::Write(2), Outcome::Ok, 2, Some(6)),
            op(Call::Read, Outcome::Read(7), 3, Some(4)),
        ];
        assert!(check(0, &h).is_err());
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // Both reads overlap the write, but once one saw the new value, a
        // later one cannot see the old.
        let h = [
            op(Call::Write(5), Outcome::Ok, 0, Some(100)),
            op(Call::Read, Outcome::Read(5), 10, Some(20)),
            op(Call::Read, Outcome::Read(0), 30, Some(40)),
        ];
        assert!(check(0, &h).is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_or_not() {
        let took = [
            op(Call::Write(5), Outcome::Unknown, 1, None),
            op(Call::Read, Outcome::Read(0), 2, Some(3)),
            op(Call::Read, Outcome::Read(5), 4, Some(5)),
        ];
        assert_eq!(check(0, &took), Ok(()));
        let never = [
            op(Call::Write(5), Outcome::Unknown, 1, None),
            op(Call::Read, Outcome::Read(0), 4, Some(5)),
        ];
        assert_eq!(check(0, &never), Ok(()));
        let undone = [
            op(Call::Write(5), Outcome::Unknown, 1, None),
            op(Call::Read, Outcome::Read(5), 2, Some(3)),
            op(Call::Read, Outcome::Read(0), 4, Some(5)),
        ];
        assert!(check(0, &undone).is_err());
    }

    #[test]
    fn a_refused_cas_while_the_register_held_its_value_fails() {
        let h = [
            op(Call::Write(1), Outcome::Ok, 0, Some(1)),
            op(
                Call::Cas { expect: 1, new: 2 },
                Outcome::Refused,
                2,
                Some(3),
            ),
        ];
        assert!(check(0, &h).is_err());
        // An unknown one may have failed.
        let h = [
            op(Call::Write(1), Outcome::Ok, 0, Some(1)),
            op(Call::Cas { expect: 1, new: 2 }, Outcome::Unknown, 2, None),
            op(Call::Read, Outcome::Read(1), 4, Some(5)),
        ];
        assert_eq!(check(0, &h), Ok(()));
    }

    #[test]
    fn a_stale_read_among_many_unknown_writes_is_refuted_quickly() {
        let mut h = vec![op(Call::Write(1), Outcome::Ok, 0, Some(1))];
        for i in 0..300 {
            h.push(op(Call::Write(1000 + i), Outcome::Unknown, 2 + i, None));
        }
        h.push(op(Call::Write(2), Outcome::Ok, 400, Some(401)));
        h.push(op(Call::Read, Outcome::Read(1), 402, Some(403)));
        let began = Instant::now();
        assert!(check(0, &h).is_err());
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            began.elapsed()
        );
        // Without the stale read it passes.
        h.pop();
        assert_eq!(check(0, &h), Ok(()));
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // Five clients, 2000 operations, each overlapping its neighbours:
        // a correct register's history (values from a sequential run).
        let mut h = Vec::new();
        let mut value = 0;
        for i in 0..2000u64 {
            let start = i * 10;
            let (call, outcome) = match i % 3 {
                0 => {
                    value = i + 1;
                    (Call::Write(value), Outcome::Ok)
                }
                1 => (Call::Read, Outcome::Read(value)),
                _ => (
                    Call::Cas {
                        expect: value,
                        new: i + 1,
                    },
                    Outcome::Ok,
                ),
            };
            if let Call::Cas { new, .. } = call {
                value = new;
            }
            // Linearized at its start; it returns 35 ms later.
            let mut o = op(call, outcome, start, Some(start + 35));
            o.client = (i % 5) as usize;
            h.push(o);
        }
        let began = Instant::now();
        assert_eq!(check(0, &h), Ok(()));
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
    }
}
