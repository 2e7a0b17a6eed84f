"""Evaluation: metrics, suites, report card, regression comparison."""
