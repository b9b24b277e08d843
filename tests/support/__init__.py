"""Test helpers: isolation on the shared servers, and real processes to start and kill."""
