"""Bridges to other tools: lm-evaluation-harness runs qscope models (`lm_eval`); feature stores
export to Neuronpedia (`neuronpedia`) and SAEDashboard (`saedashboard`)."""
