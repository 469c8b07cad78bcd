"""Unit tests of appliance.policy: SQL classification, rules and the policy config."""
