Feature: rbee's CLI fails with one clear sentence and the right exit code, and changes nothing
  The keeper's side of the failures test-001 names: what `rbee` prints and exits with, against a real fleet of
  SmolLM2 (one worker of one slot, a queen that queues nothing, so "busy" is easy to make).

  Background:
    Given a fleet of 1 "smollm2" worker of 1 slot applied on the local hive, its queen queueing nothing

  @test001-6
  Scenario: rbee infer for a model the fleet does not serve
    When I run rbee infer -m "llama-70b" "Hello"
    Then rbee exits with 1
    And stdout is empty
    And stderr is one line that names "llama-70b" and "smollm2"
    And the smollm2 worker stayed idle with the same pid

  @test001-36 @test001-14
  Scenario Outline: commands that need the queen say so when it is not there
    Given RBEE_HOME points at an empty folder, where no queen was ever started
    When I run the command rbee <command>
    Then rbee exits with 1 within 15 seconds
    And stderr is one line that says no queen is running and to run "rbee apply"

    Examples:
      | command                |
      | status                 |
      | events                 |
      | infer -m smollm2 Hi    |
      | route -m smollm2       |

  @test001-36
  Scenario: rbee infer --queen pointed at a port where nothing listens
    When I run rbee infer against a port where nothing listens
    Then rbee exits with 1 within 15 seconds
    And stderr names that URL and says to run "rbee apply"

  @test001-44
  Scenario: rbee infer with a wrong API key
    Given RBEE_API_KEY is set to "not-a-real-key-of-this-fleet-at-all"
    When I run rbee infer -m "smollm2" "Hello"
    Then rbee exits with 1
    And stdout is empty
    And stderr says authentication failed and names RBEE_API_KEY
    And the queen's request log shows no task answered with that key

  @test001-11 @test001-35 @test001-41
  Scenario: rbee infer retries a busy fleet, then gives up clearly
    Given a long streaming request holds the only smollm2 worker
    When I run rbee infer -m "smollm2" "Hello" with --retries 2
    Then stderr shows 2 lines like "queen busy (queue_full); retrying in"
    And rbee exits with 1
    And stderr suggests waiting, adding replicas, or --retries
    And the held stream completes normally

  @test001-35
  Scenario: rbee infer succeeds when a slot frees during its retries
    Given a short streaming request holds the only smollm2 worker
    When I run rbee infer -m "smollm2" "Hello" with --retries 4
    Then rbee exits with 0
    And stdout has the answer's tokens

  @test001-40
  Scenario: Ctrl+C cancels the generation and exits 130
    Given rbee infer is streaming a long answer
    When the user presses Ctrl+C
    Then rbee exits with 130 within 15 seconds
    And stderr ends with "Interrupted: the task is cancelled."
    And within 2 seconds no request is in flight on the smollm2 worker
