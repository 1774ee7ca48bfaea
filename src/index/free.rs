//! The free list: pads the committed index lists as free, used as a stack (taken from and
//! returned to its end). It is stored in free-list pages plus a short tail in the root, so a
//! commit rewrites only the pages whose pads changed; to know which, the list remembers how
//! long a prefix of it still equals the list last committed.

use super::PadRef;

/// Pads per free-list page: about 90 KB of page, so returning pads rewrites little, while
/// 300,000 free pads take about 150 page references in the root. The root's tail holds fewer
/// than two pages' worth, so a list that grows and shrinks by a few pads writes no page.
pub const FREE_PAGE_PADS: usize = 2048;

/// How far down the list [`FreeList::take_cheapest`] looks: the pads freed lately lie at its
/// end, and a pad found lower down shortens the committed prefix (pages rewritten) to there.
const TAKE_LOOKS_AT: usize = 512;

#[derive(Clone, Debug, Default)]
pub struct FreeList {
    pads: Vec<PadRef>,
    /// `pads[..committed]` equals the committed list's first `committed` pads.
    committed: usize,
    /// `pads[..planned]` equals the first `planned` pads of the list the commit in progress
    /// writes (meaningful between `plan_commit` and the commit's end).
    planned: usize,
}

impl FreeList {
    /// A list loaded from the committed index: all of it is committed.
    pub fn committed(pads: Vec<PadRef>) -> Self {
        let n = pads.len();
        FreeList {
            pads,
            committed: n,
            planned: n,
        }
    }

    pub fn len(&self) -> usize {
        self.pads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pads.is_empty()
    }

    pub fn as_slice(&self) -> &[PadRef] {
        &self.pads
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PadRef> {
        self.pads.iter()
    }

    pub fn pop(&mut self) -> Option<PadRef> {
        let pad = self.pads.pop()?;
        self.shorten_marks(self.pads.len());
        Some(pad)
    }

    /// Takes the pad nearest the end with the lowest `cost` among the last [`TAKE_LOOKS_AT`]
    /// (the end, as [`pop`](Self::pop), unless pads there cost more), if `accept` takes its
    /// cost; else leaves the list as it is.
    pub fn take_cheapest(
        &mut self,
        cost: impl Fn(&PadRef) -> u64,
        accept: impl FnOnce(u64) -> bool,
    ) -> Option<PadRef> {
        let mut best: Option<(usize, u64)> = None;
        for (i, pad) in self.pads.iter().enumerate().rev().take(TAKE_LOOKS_AT) {
            let c = cost(pad);
            if best.is_none_or(|(_, b)| c < b) {
                best = Some((i, c));
            }
            if c == 0 {
                break;
            }
        }
        let (i, c) = best?;
        if !accept(c) {
            return None;
        }
        let pad = self.pads.remove(i);
        self.shorten_marks(i);
        Some(pad)
    }

    pub fn push(&mut self, pad: PadRef) {
        self.pads.push(pad);
    }

    /// Keeps the pads `keep` accepts (a replay claiming pads from anywhere in the list).
    pub fn retain(&mut self, mut keep: impl FnMut(&PadRef) -> bool) {
        if let Some(first) = self.pads.iter().position(|p| !keep(p)) {
            self.shorten_marks(first);
            self.pads.retain(keep);
        }
    }

    fn shorten_marks(&mut self, len: usize) {
        self.committed = self.committed.min(len);
        self.planned = self.planned.min(len);
    }

    /// How long a prefix still equals the committed list.
    pub fn committed_prefix(&self) -> usize {
        self.committed
    }

    /// A commit is planned that writes this list followed by other pads.
    pub fn plan(&mut self) {
        self.planned = self.pads.len();
    }

    /// The planned commit landed: its list is the committed one now.
    pub fn landed(&mut self) {
        self.committed = self.planned;
    }
}

impl Extend<PadRef> for FreeList {
    fn extend<I: IntoIterator<Item = PadRef>>(&mut self, pads: I) {
        self.pads.extend(pads);
    }
}

impl<'a> IntoIterator for &'a FreeList {
    type Item = &'a PadRef;
    type IntoIter = std::slice::Iter<'a, PadRef>;
    fn into_iter(self) -> Self::IntoIter {
        self.pads.iter()
    }
}

impl<'a> Extend<&'a PadRef> for FreeList {
    fn extend<I: IntoIterator<Item = &'a PadRef>>(&mut self, pads: I) {
        self.pads.extend(pads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheapest_pad_nearest_the_end_is_taken() {
        let pads: Vec<PadRef> = (0..6).map(|_| PadRef::fresh()).collect();
        let cost_of = |costs: &'static [u64]| {
            let pads = pads.clone();
            move |pad: &PadRef| costs[pads.iter().position(|p| p == pad).unwrap()]
        };
        let mut list = FreeList::committed(pads.clone());
        // Free at once beats waiting; of equal costs, the one nearest the end.
        let cost = cost_of(&[5, 0, 0, 3, 7, 7]);
        assert_eq!(list.take_cheapest(&cost, |c| c > 0), None, "a cost refused");
        assert_eq!(list.len(), 6, "a refused pad stays");
        let took = list.take_cheapest(&cost, |c| {
            assert_eq!(c, 0);
            true
        });
        assert_eq!(took, Some(pads[2]));
        assert_eq!(
            list.committed_prefix(),
            2,
            "the list changed from the taken pad on"
        );
        // All waiting: the shortest wait.
        let cost = cost_of(&[5, 9, 0, 3, 7, 7]);
        assert_eq!(list.take_cheapest(&cost, |_| true), Some(pads[3]));
        assert_eq!(list.len(), 4);
        // No cost: a stack, as pop.
        assert_eq!(list.take_cheapest(|_| 0, |_| true), Some(pads[5]));
        assert_eq!(FreeList::default().take_cheapest(|_| 0, |_| true), None);
    }

    #[test]
    fn the_committed_prefix_shrinks_with_every_change_below_it() {
        let pads: Vec<PadRef> = (0..10).map(|_| PadRef::fresh()).collect();
        let mut list = FreeList::committed(pads.clone());
        list.push(PadRef::fresh());
        assert_eq!(list.committed_prefix(), 10);
        list.pop();
        list.pop();
        assert_eq!(list.committed_prefix(), 9);
        let gone = pads[3].seed;
        list.retain(|p| p.seed != gone);
        assert_eq!(list.committed_prefix(), 3);
        assert_eq!(list.len(), 8);

        list.plan();
        list.push(PadRef::fresh());
        list.pop();
        list.pop();
        assert_eq!(list.committed_prefix(), 3);
        list.landed();
        assert_eq!(list.committed_prefix(), 7);
    }
}
