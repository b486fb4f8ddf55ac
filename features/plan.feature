Feature: rbee plan shows what would change, Terraform-style

  Background:
    Given a hive.yaml with one local hive "box" serving model "smol" with 2 replicas

  @test001-9
  Scenario: plan shows the cold start
    Given nothing runs on hive "box"
    When I run rbee plan with --detailed-exitcode
    Then the plan installs and starts hive "box"
    And the plan adds model "smol" to hive "box"
    And the plan starts 2 workers of "smol"
    And the plan ends with "Plan: 4 to add, 0 to change, 0 to destroy."
    And rbee exits with 2

  @test001-10 @test001-52
  Scenario: a matching fleet plans no changes
    Given hive "box" runs model "smol" with 2 idle workers
    When I run rbee plan with --detailed-exitcode
    Then the plan ends with "No changes. Live state matches hive.yaml."
    And rbee exits with 0

  @test001-13 @test001-43
  Scenario: a hive that runs a newer rbee is never downgraded
    Given hive "box" runs rbee 9.0.0 with model "smol" and 2 idle workers
    When I run rbee plan with --detailed-exitcode
    Then the plan waits on hive "box", naming rbee 9.0.0 and this rbee's version
    And the plan ends with "Plan: 0 to add, 0 to change, 0 to destroy; 1 waiting (marked !)."
