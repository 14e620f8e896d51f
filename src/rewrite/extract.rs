//! Extraction: the cost function that makes the fully expanded sum of products the cheapest
//! term of its e-class, and the reading of that term into path [`Template`]s.

use std::cmp::Ordering;

use egg::{CostFunction, Id, Language, RecExpr};

use super::lang::Tensor;
use crate::paths::{Factor, FactorKind, Template};

/// What the top node of a chosen term is, so a parent can tell whether its children are expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Add,
    Kron,
    Mul,
    Atom,
    Other,
}

/// `(unexpanded, size)`, compared in that order. `unexpanded` counts the nodes that a normal
/// form must not contain: a product of sums, a pending mixed product, a left-nested product or a
/// truncation.
#[derive(Debug, Clone)]
pub struct Cost {
    unexpanded: u64,
    size: u64,
    top: Top,
}

impl PartialEq for Cost {
    fn eq(&self, other: &Cost) -> bool {
        (self.unexpanded, self.size) == (other.unexpanded, other.size)
    }
}

impl PartialOrd for Cost {
    fn partial_cmp(&self, other: &Cost) -> Option<Ordering> {
        (self.unexpanded, self.size).partial_cmp(&(other.unexpanded, other.size))
    }
}

pub struct ExpandedForm;

impl CostFunction<Tensor> for ExpandedForm {
    type Cost = Cost;

    fn cost<C>(&mut self, enode: &Tensor, mut costs: C) -> Cost
    where
        C: FnMut(Id) -> Cost,
    {
        let children: smallvec::SmallVec<[Cost; 3]> = enode.children().iter().map(|&id| costs(id)).collect();
        let sum = |f: fn(&Cost) -> u64| children.iter().map(f).fold(0u64, u64::saturating_add);
        let mut unexpanded = sum(|c| c.unexpanded);
        let size = sum(|c| c.size).saturating_add(1);
        let is_sum = |c: &Cost| c.top == Top::Add;
        let top = match enode {
            Tensor::Add(_) => Top::Add,
            Tensor::Mul(_) => {
                let (a, b) = (&children[0], &children[1]);
                unexpanded += u64::from(is_sum(a) || is_sum(b));
                unexpanded += u64::from(a.top == Top::Kron && b.top == Top::Kron);
                unexpanded += u64::from(a.top == Top::Mul);
                Top::Mul
            }
            Tensor::Kron(_) => {
                unexpanded += u64::from(children.iter().any(is_sum));
                Top::Kron
            }
            Tensor::Trunc(_) => {
                unexpanded += 1;
                Top::Other
            }
            Tensor::Num(_) | Tensor::Index(_) => Top::Other,
            _ => Top::Atom,
        };
        Cost { unexpanded, size, top }
    }
}

/// Reads an extracted expansion, a sum of monomials `position ⊗ weights`, into templates.
pub fn read_templates(expr: &RecExpr<Tensor>) -> Result<Vec<Template>, String> {
    let root = Id::from(expr.as_ref().len() - 1);
    let mut terms = Vec::new();
    flatten_add(expr, root, &mut terms);
    terms.into_iter().map(|term| read_template(expr, term)).collect()
}

fn flatten_add(expr: &RecExpr<Tensor>, id: Id, out: &mut Vec<Id>) {
    match &expr[id] {
        Tensor::Add([a, b]) => {
            flatten_add(expr, *a, out);
            flatten_add(expr, *b, out);
        }
        Tensor::Zero => {}
        _ => out.push(id),
    }
}

fn read_template(expr: &RecExpr<Tensor>, id: Id) -> Result<Template, String> {
    let Tensor::Kron([position, weights]) = &expr[id] else {
        return Err(format!("a term that is not a tensor product: {}", show(expr, id)));
    };
    let position = match &expr[*position] {
        Tensor::Kron([query, key]) => vec![chain(expr, *query)?, chain(expr, *key)?],
        _ => vec![chain(expr, *position)?],
    };
    let weights = chain(expr, *weights)?;
    // The monomial is summed over every head index it contains.
    let mut binders: Vec<_> = position.iter().flatten().chain(&weights).filter_map(|f| f.index).collect();
    binders.sort();
    binders.dedup();
    Ok(Template { binders, position, weights })
}

/// A right-nested product of atoms, as its list of factors (identities dropped).
fn chain(expr: &RecExpr<Tensor>, id: Id) -> Result<Vec<Factor>, String> {
    let mut out = Vec::new();
    let mut stack = vec![id];
    while let Some(id) = stack.pop() {
        match &expr[id] {
            Tensor::Mul([a, b]) => {
                stack.push(*b);
                stack.push(*a);
            }
            Tensor::Identity => {}
            _ => out.push(atom(expr, id)?),
        }
    }
    Ok(out)
}

fn atom(expr: &RecExpr<Tensor>, id: Id) -> Result<Factor, String> {
    let index = |i: &Id| match &expr[*i] {
        Tensor::Index(var) => Ok(*var),
        other => Err(format!("a head weight indexed by `{other}`")),
    };
    let layer = |i: &Id| match &expr[*i] {
        Tensor::Num(n) if *n >= 0 => Ok(*n as usize),
        other => Err(format!("a layer weight numbered by `{other}`")),
    };
    let indexed = |kind, i: &Id| Ok::<_, String>(Factor::indexed(kind, index(i)?));
    Ok(match &expr[id] {
        Tensor::Pattern(i) => indexed(FactorKind::Pattern, i)?,
        Tensor::WOV(i) => indexed(FactorKind::OV, i)?,
        Tensor::WO(i) => indexed(FactorKind::O, i)?,
        Tensor::WQ(i) => indexed(FactorKind::Q, i)?,
        Tensor::WK(i) => indexed(FactorKind::K, i)?,
        Tensor::BiasV(i) => indexed(FactorKind::BiasV, i)?,
        Tensor::BiasQ(i) => indexed(FactorKind::BiasQ, i)?,
        Tensor::BiasK(i) => indexed(FactorKind::BiasK, i)?,
        Tensor::Scale(site) => match &expr[*site] {
            Tensor::Site(site) => Factor::plain(FactorKind::Scale(*site)),
            other => return Err(format!("a LayerNorm scale at `{other}`")),
        },
        Tensor::WIn(l) => Factor::plain(FactorKind::In(layer(l)?)),
        Tensor::WGate(l) => Factor::plain(FactorKind::Gate(layer(l)?)),
        Tensor::BiasGate(l) => Factor::plain(FactorKind::BiasGate(layer(l)?)),
        Tensor::MlpOut(l) => Factor::plain(FactorKind::Mlp(layer(l)?)),
        Tensor::BiasO(l) => Factor::plain(FactorKind::BiasO(layer(l)?)),
        Tensor::BiasIn(l) => Factor::plain(FactorKind::BiasIn(layer(l)?)),
        Tensor::BiasOut(l) => Factor::plain(FactorKind::BiasOut(layer(l)?)),
        Tensor::BiasU => Factor::plain(FactorKind::BiasU),
        Tensor::Embed => Factor::plain(FactorKind::Embed),
        Tensor::PosEmbed => Factor::plain(FactorKind::PosEmbed),
        Tensor::Unembed => Factor::plain(FactorKind::Unembed),
        _ => return Err(format!("an unexpanded factor: {}", show(expr, id))),
    })
}

fn show(expr: &RecExpr<Tensor>, id: Id) -> String {
    let nodes: Vec<Tensor> = expr.as_ref()[..=usize::from(id)].to_vec();
    RecExpr::from(nodes).to_string()
}
