"""Results for CI systems: JUnit XML (junit.py), scenario results as JUnit suites
(scenario_junit.py) and the --report directory of JSON results (report_dir.py)."""
