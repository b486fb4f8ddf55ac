Feature: A hive that hangs on every change fails only its own changes

  Background:
    Given a fleet of 1 "smollm2" worker applied with a reconcile interval of 2 seconds and heartbeats every second

  Scenario: A hive that answers its state but hangs on every change fails only its own changes
    Given a second hive that answers its state but never answers a change
    When hive.yaml puts a worker on each hive and is applied
    Then rbee apply ends within 90 seconds with a sentence about the hung hive
    And the first hive's worker is unchanged and serves requests
    And a worker killed on the first hive is replaced while the hung hive still hangs
