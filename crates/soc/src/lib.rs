//! m2m-soc: the science of the training data lake (built by the SOC issue).
//!
//! It will own the splat energy E(x) = -log sum_i alpha_i exp(-kappa_i |x - mu_i|^2) and its gradient,
//! concentrations estimated from data, the self-organised-criticality controller (a sandpile over the
//! index's cluster graph) that drives importance sampling, and Langevin dynamics on the sphere. Nothing is
//! implemented yet.
